"""Cut data/fashion-mnist-mini from Debian's dataset-fashion-mnist (first N of each split)."""
import gzip
import pathlib
import struct

SRC = pathlib.Path("/usr/share/datasets/fashion-mnist")
OUT = pathlib.Path(__file__).resolve().parent.parent / "data" / "fashion-mnist-mini"


def cut(split: str, n: int) -> None:
    images = gzip.open(SRC / f"{split}-images-idx3-ubyte.gz").read()
    labels = gzip.open(SRC / f"{split}-labels-idx1-ubyte.gz").read()
    with gzip.GzipFile(OUT / f"{split}-images-idx3-ubyte.gz", "wb", mtime=0, compresslevel=9) as f:
        f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images[16 : 16 + n * 784])
    with gzip.GzipFile(OUT / f"{split}-labels-idx1-ubyte.gz", "wb", mtime=0, compresslevel=9) as f:
        f.write(struct.pack(">II", 0x801, n) + labels[8 : 8 + n])


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    cut("train", 3000)
    cut("t10k", 1000)
