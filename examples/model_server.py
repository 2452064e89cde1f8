#!/usr/bin/env python3
"""A small "model" for the AdMedia worker agent that really writes images.

Two ways to run it (see docs/worker-protocol.md):

  persistent executor:  admedia-worker --executor persistent \
                            --model-command "python3 examples/model_server.py"
      One process for many jobs: it reads one JSON job per line on stdin
      and answers with JSON lines on stdout (progress, then result/error).
      The "model" is loaded once, at start, and stays loaded.

  command executor:     admedia-worker --executor command \
                            --image-command "python3 examples/model_server.py --once"
      One process per job: one JSON job on stdin, exit 0 when done.

Either way it writes `count` PNG files into the job's `output_dir`. With an
`init_image` input it transforms that image (image-to-image); without one
it paints a gradient chosen by the prompt and seed (text-to-image). The
prompt is written onto the picture so a human can tell outputs apart.

Needs Pillow (`pip install pillow`).
"""

import hashlib
import json
import os
import sys
import time

from PIL import Image, ImageDraw, ImageOps


class Model:
    """Stands in for weights that take long to load and stay in memory."""

    def __init__(self):
        self.loaded_at = time.time()
        self.jobs_served = 0

    def generate(self, job, emit):
        params = job.get("params", {})
        width = int(params.get("width", 512))
        height = int(params.get("height", 512))
        count = int(job.get("count", params.get("count", 1)))
        prompt = job.get("prompt", "")
        seed = params.get("seed")
        init = next((i for i in job.get("inputs", []) if i.get("role") == "init_image"), None)
        base = None
        if init is not None:
            with Image.open(init["path"]) as src:
                base = ImageOps.fit(src.convert("RGB"), (width, height))
        paths = []
        for n in range(count):
            digest = hashlib.sha256(f"{prompt}|{seed}|{n}".encode()).digest()
            tint = tuple(digest[:3])
            if base is not None:
                # "image-to-image": posterize the init image and tint it.
                img = ImageOps.posterize(base, 3)
                img = Image.blend(img, Image.new("RGB", img.size, tint), 0.35)
            else:
                img = Image.linear_gradient("L").resize((width, height))
                img = ImageOps.colorize(img, black=tint, white=tuple(digest[3:6]))
            ImageDraw.Draw(img).text((8, 8), f"{prompt[:60]} #{n}", fill=(255, 255, 255))
            path = os.path.join(job["output_dir"], f"{n:03d}.png")
            img.save(path, "PNG")
            paths.append(path)
            emit({"type": "progress", "job_id": job["job_id"],
                  "percent": int(100 * (n + 1) / count), "message": f"image {n + 1} of {count}"})
        self.jobs_served += 1
        return paths


def emit(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def run_one(model, job, say):
    try:
        paths = model.generate(job, say)
    except (OSError, ValueError) as e:
        # An unreadable init image or impossible size is the input's fault.
        say({"type": "error", "job_id": job.get("job_id"), "class": "user", "message": str(e)})
        return False
    say({"type": "result", "job_id": job["job_id"], "outputs": paths})
    return True


def main():
    model = Model()
    if "--once" in sys.argv[1:]:
        job = json.load(sys.stdin)
        # The command executor reads only a final `{"error": …}` on stdout;
        # progress and the result go to stderr for a person to read.
        errors = []

        def say(message):
            if message.get("type") == "error":
                errors.append(message)
            print(json.dumps(message), file=sys.stderr)

        if run_one(model, job, say):
            return 0
        err = errors[-1]
        print(json.dumps({"error": {"class": err["class"], "message": err["message"]}}))
        return 1
    emit({"type": "ready"})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            job = json.loads(line)
        except json.JSONDecodeError as e:
            print(f"model_server: unreadable line: {e}", file=sys.stderr)
            continue
        if job.get("type") != "job":
            continue
        run_one(model, job, emit)
        print(f"model_server: {model.jobs_served} jobs served since start "
              f"(pid {os.getpid()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
