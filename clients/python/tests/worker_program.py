"""A worker the worker tests start as a process of its own: the example's
drawing, with behaviour chosen by the prompt, and marks written into
``ADMEDIA_TEST_MARKS`` so a test can see what the handler saw.

- ``slow N``: N steps of 0.1 s, reporting progress after each (a cancel
  reaches the handler as ``Cancelled`` from ``job.progress``);
- ``user-error``: raises ``UserError``; ``crash``: raises ``RuntimeError``;
- ``inputs``: records what the job's inputs were, then draws;
- ``unsafe``: labels output 1 over the server's threshold, then draws;
- anything else: draws.

Marks: ``<job_id>.started`` when the handler starts, ``<job_id>.cancelled``
when it saw the cancel, ``<job_id>.inputs`` (JSON), and one line in
``setup.log`` per model load.
"""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from admedia import worker

MARKS = Path(os.environ["ADMEDIA_TEST_MARKS"])


def mark(name, text=""):
    tmp = MARKS / f".{name}.tmp"
    tmp.write_text(text)
    tmp.rename(MARKS / name)


class Model:
    def load(self):
        with open(MARKS / "setup.log", "a") as log:
            log.write(f"{os.getpid()}\n")
        self.loaded = True

    def __call__(self, job):
        assert self.loaded, "load() runs before any job"
        mark(f"{job.job_id}.started", str(job.attempt))
        words = job.prompt.split()
        if words[:1] == ["slow"]:
            try:
                steps = int(words[1])
                for step in range(steps):
                    time.sleep(0.1)
                    job.progress((step + 1) / steps, f"step {step + 1} of {steps}")
            except worker.Cancelled:
                mark(f"{job.job_id}.cancelled")
                raise
        elif job.prompt == "user-error":
            raise worker.UserError("the prompt asks for something this model cannot draw")
        elif job.prompt == "crash":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        elif job.prompt == "unsafe":
            job.label(0, "violence", 0.01)
            job.label(1, "violence", 0.9)
        elif job.prompt == "inputs":
            seen = [{"role": i.role, "material_id": i.material_id, "content_type": i.content_type,
                     "path": str(i.path), "head": i.path.read_bytes()[:8].hex()} for i in job.inputs]
            mark(f"{job.job_id}.inputs", json.dumps({"inputs": seen, "output_dir": str(job.output_dir)}))
        for n in range(job.count):
            rgb = hashlib.sha256(f"{job.prompt}|{job.seed}|{n}".encode()).digest()[:3]
            image = Image.new("RGB", (job.width, job.height), tuple(rgb))
            ImageDraw.Draw(image).text((8, 8), job.prompt[:80], fill=(255, 255, 255))
            image.save(job.output(n), "PNG")


if __name__ == "__main__":
    slots = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    worker.run(Model(), kinds=["image"], slots=slots, name=os.environ.get("ADMEDIA_TEST_WORKER_NAME"))
