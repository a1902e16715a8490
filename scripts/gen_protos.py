"""Regenerate the committed gRPC stubs from protos/ (run: make protos).

`--check DIR` writes into DIR instead, so a test can compare against the committed files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos" / "unison" / "v1"
OUT_DIR = ROOT / "node"


def generate(out: Path) -> list[Path]:
    # Map the proto's directory to the package path of the stubs, so the generated
    # imports read `from unison.replication import replication_pb2`.
    mapping = f"-Iunison/replication={PROTO_DIR}"
    args = ["grpc_tools.protoc", mapping, f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", "unison/replication/replication.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    target = out / "unison" / "replication"
    return sorted(target.glob("replication_pb2*"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output root (default: node/)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in generate(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
