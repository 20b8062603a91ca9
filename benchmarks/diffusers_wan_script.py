"""The reference for the start-up benchmark's whole-process comparison: what a diffusers user writes to make
the same clip as `python launch.py generate t2v`, as a plain script (diffusers' `WanPipeline`, the same
folder, size, steps, guidance, seed and prompt length), writing an H.264 MP4 with PyAV (diffusers'
`export_to_video` needs imageio or OpenCV, which the studio does not install).

    python benchmarks/diffusers_wan_script.py --model DIR --out clip.mp4 [--text-encoder DIR]

`--text-encoder` is a folder holding the text encoder and its tokenizer, for models whose studio.json takes
them from a package (the embedded model's MiniLM); without it they come from the model folder.
"""

import argparse

import av
import numpy as np
import torch
from diffusers import WanPipeline
from transformers import AutoModel, AutoTokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--text-encoder")
parser.add_argument("--prompt", default="a red ball bounces on a floor")
parser.add_argument("--steps", type=int, default=10)
parser.add_argument("--width", type=int, default=128)
parser.add_argument("--height", type=int, default=128)
parser.add_argument("--frames", type=int, default=17)
parser.add_argument("--guidance", type=float, default=4.0)
parser.add_argument("--fps", type=int, default=8)
parser.add_argument("--max-sequence-length", type=int, default=512)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", required=True)
args = parser.parse_args()

extra = {}
if args.text_encoder:
    extra = {"text_encoder": AutoModel.from_pretrained(args.text_encoder),
             "tokenizer": AutoTokenizer.from_pretrained(args.text_encoder)}
pipe = WanPipeline.from_pretrained(args.model, torch_dtype=torch.float32, **extra)
video = pipe(prompt=args.prompt, negative_prompt="", width=args.width, height=args.height, num_frames=args.frames,
             num_inference_steps=args.steps, guidance_scale=args.guidance,
             generator=torch.Generator().manual_seed(args.seed), max_sequence_length=args.max_sequence_length,
             output_type="np").frames[0]
frames = (np.clip(video, 0, 1) * 255).round().astype(np.uint8)

with av.open(args.out, "w") as container:
    stream = container.add_stream("libx264", rate=args.fps)
    stream.width, stream.height, stream.pix_fmt = args.width, args.height, "yuv420p"
    for frame in frames:
        container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
print(f"wrote {args.out}")
