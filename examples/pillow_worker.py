#!/usr/bin/env python3
"""A GPU worker in a dozen lines with the Python SDK (admedia.worker): it
"generates" each image with Pillow, a colour field chosen by the prompt and
seed with the prompt written on it, so the same job always draws the same
picture. Swap draw() for a real pipeline (load it once in setup()).

    pip install ./clients/python pillow
    ADMEDIA_SERVER_URL=ws://127.0.0.1:8080 ADMEDIA_WORKER_TOKEN=… python3 examples/pillow_worker.py
"""

import hashlib

from PIL import Image, ImageDraw

from admedia import worker


def draw(job):
    for n in range(job.count):
        rgb = hashlib.sha256(f"{job.prompt}|{job.seed}|{n}".encode()).digest()[:3]
        image = Image.new("RGB", (job.width, job.height), tuple(rgb))
        ImageDraw.Draw(image).text((8, 8), job.prompt[:80], fill=tuple(255 - c for c in rgb))
        image.save(job.output(n), "PNG")
        job.progress((n + 1) / job.count)


if __name__ == "__main__":
    worker.run(draw, kinds=["image"], slots=2)  # url and token from the environment
