"""The committed gRPC stubs must be exactly what the .proto generates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "node" / "unison" / "replication"


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out",
                    str(tmp_path)], check=True, capture_output=True)
    generated = sorted((tmp_path / "unison" / "replication").glob("replication_pb2*"))
    assert [p.name for p in generated] == [
        "replication_pb2.py", "replication_pb2.pyi", "replication_pb2_grpc.py"]
    for fresh in generated:
        committed = STUBS / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed} is stale: run `make protos` and commit the result")


def test_stubs_import_and_describe_the_service() -> None:
    from unison.replication import replication_pb2, replication_pb2_grpc

    service = replication_pb2.DESCRIPTOR.services_by_name["Replication"]
    assert {m.name for m in service.methods} >= {"Stream", "LatestLSN"}
    assert hasattr(replication_pb2_grpc, "ReplicationStub")
