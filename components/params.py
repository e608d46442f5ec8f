"""params: write a complete params file from a profile, or check one.

    python -m components.params profiles/all-tasks.yaml --out params.yaml   # then dvc repro
    python -m components.params params.yaml                                 # only check it

Profiles list only what they change; the written file has every key, as DVC needs for
the params each stage declares. An unknown or ill-typed key is an error naming it
(the models: components.formats.params).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from components.console import run_cli
from components.formats.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="a params or profile YAML file (partial is fine)")
    parser.add_argument("--out", type=Path, help="where to write the complete file (default: only validate)")
    args = parser.parse_args(argv)
    params = load_params(args.profile)
    if args.out:
        header = f"# Complete params written by `python -m components.params {args.profile}`; edit freely.\n"
        args.out.write_text(header + yaml.safe_dump(params.model_dump(mode="json", by_alias=True), sort_keys=False))
    print(f"{args.profile}: valid ({', '.join(params.tasks)})")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
