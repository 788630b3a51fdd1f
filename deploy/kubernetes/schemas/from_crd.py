"""Writes the JSON schema of each CRD given (its served, stored version's openAPIV3Schema) into this folder, for
tests/test_kubernetes.py: `python deploy/kubernetes/schemas/from_crd.py CRD.yaml...` (README in this folder)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def main(paths: list[str]) -> None:
    for path in paths:
        crd = yaml.safe_load(Path(path).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        (version,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
        schema = {"$comment": f"openAPIV3Schema of {kind} {group}/{version['name']} ({Path(path).name})",
                  **version["schema"]["openAPIV3Schema"]}  # fmt: skip
        out = Path(__file__).parent / f"{kind.lower()}-{group.split('.')[0]}-{version['name']}.json"
        out.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(out)


if __name__ == "__main__":
    main(sys.argv[1:])
