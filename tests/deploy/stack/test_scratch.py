"""A pod's /tmp in the stack test holds what its emptyDir's sizeLimit allows, and not a byte more."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.deploy import wiring
from tests.deploy.conftest import rendered
from tests.deploy.stack.profile_stack import SecretSet, build_root


def test_a_pods_tmp_refuses_what_its_size_limit_does_not_hold(tmp_path: Path) -> None:
    (upload,) = [w for w in wiring.workloads(rendered("default")) if w.serves == ["upload"]]
    root = build_root(upload, SecretSet().values(), tmp_path)
    try:
        assert root.scratch_bytes == 64 * 2**20
        target = root.host_path("/tmp/spill")
        write = "import sys; open(sys.argv[1], 'wb').write(bytes(int(sys.argv[2])))"
        fits = subprocess.run(
            root.confine([sys.executable, "-c", write, str(target), str(root.scratch_bytes // 2)]),
            check=False,
        )
        assert fits.returncode == 0
        target.unlink()
        spills = subprocess.run(
            root.confine([sys.executable, "-c", write, str(target), str(root.scratch_bytes + 2**20)]),
            check=False,
            capture_output=True,
        )
        assert spills.returncode != 0  # ENOSPC on the tmpfs, SIGXFSZ under the file-size limit
    finally:
        root.release()
