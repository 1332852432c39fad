"""deploy/Dockerfile cannot be built here (no container runtime): check its shape statically."""

from __future__ import annotations

import json
import re

from conftest import DEPLOY


def stages():
    out, current = [], None
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = {"from": rest, "instructions": []}
            out.append(current)
        elif current is not None:
            current["instructions"].append((word.upper(), rest))
    return out


def test_multi_stage_distroless_nonroot_without_shell():
    built = stages()
    assert len(built) >= 2, "multi-stage: build and runtime"
    assert "--locked" in " ".join(rest for _, rest in built[0]["instructions"])
    final = built[-1]
    assert re.match(r"gcr\.io/distroless/\S+:nonroot", final["from"]), final["from"]
    kinds = [k for k, _ in final["instructions"]]
    assert "RUN" not in kinds and "SHELL" not in kinds, "the runtime stage has no shell to run anything with"
    (user,) = [rest for k, rest in final["instructions"] if k == "USER"]
    assert user.split(":")[0] not in ("0", "root")
    (entry,) = [rest for k, rest in final["instructions"] if k == "ENTRYPOINT"]
    assert json.loads(entry) == ["/usr/local/bin/egress-authz"], "exec form: no shell involved"
    (cmd,) = [rest for k, rest in final["instructions"] if k == "CMD"]
    assert json.loads(cmd)[0] == "serve"
    exposed = {int(p) for k, rest in final["instructions"] if k == "EXPOSE" for p in rest.split()}
    assert exposed == {9000, 9090}
