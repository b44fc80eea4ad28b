"""Prepare an image directory: `python -m pipelines.images --source SRC --out DIR [options]`.

    python -m pipelines.images --source builtin --out data/digits
    python -m pipelines.images --source local:/usr/share/fashion-mnist --out data/fashion-mnist
    python -m pipelines.images --source hf:uoft-cs/cifar10 --out data/cifar10      # needs the network once

`blueberry-train --preset dit-tiny --data SRC` prepares the same sources into the cache on first use;
this command is for choosing where the directory goes and the settings (resizing, channels, limits).
"""

from __future__ import annotations

import argparse
import sys

from blueberry.errors import UserError
from pipelines.images.prepare import ImagePrepareConfig, prepare_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.images", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="builtin", help="builtin, local:DIR or hf:DATASET[:CONFIG][@SPLIT]")
    parser.add_argument("--out", required=True, help="the directory to prepare")
    parser.add_argument("--image-size", type=int, help="resize every image to this square side")
    parser.add_argument("--channels", type=int, choices=(1, 3), help="1 (grey) or 3 (RGB); default: the first image's")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="held out by hash when the source has no test split of its own (default: 0.1)")
    parser.add_argument("--max-images", type=int, help="read at most this many images")
    parser.add_argument("--seed", type=int, default=0, help="decides which images are held out (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        cfg = ImagePrepareConfig(source=args.source, image_size=args.image_size, channels=args.channels,
                                 val_fraction=args.val_fraction, max_images=args.max_images, seed=args.seed)
        manifest = prepare_images(cfg, args.out, progress=not args.no_progress)
    except UserError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.out}: {manifest.splits['train'].images:,} training and {manifest.splits['val'].images:,} held-out "
          f"images of {'x'.join(map(str, manifest.shape))}, {manifest.num_classes} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
