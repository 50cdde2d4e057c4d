"""The ratio chart of a results file whose run cannot be repeated here: the record of the
family's run on an NVIDIA H200 (`benchmarks/results/compare_family_h200.md`), drawn by the
harness's chart function (`_harness.plot`, the one `compare_flashbax.py` draws with) from the
table in the file, so the chart shows exactly the numbers the page shows.

    python benchmarks/results_chart.py                   # compare_family_h200.png
    python benchmarks/results_chart.py compare_family    # the CPU family table's chart

Each name is a results file of eqx_replay-against-Flashbax rows (`_harness.RATIO_HEADER`,
between the `table` section's markers); it writes `benchmarks/results/<name>.png`, titled
with the file's `- Machine:` line. The ratio each bar shows is recomputed from the two
times, as `_harness.Row` does; a ratio that rounds differently from the file's is reported.
`--tiny` writes `<name>_tiny.png` instead, as the benchmarks do; `--out DIR` writes elsewhere.
"""

import re
import sys
from pathlib import Path

import _harness as h


UNITS = {"µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
START, END = "<!-- --8<-- [start:table] -->", "<!-- --8<-- [end:table] -->"


def seconds(cell: str) -> float:
    """`69.3 µs`, `1.47 ms`, `1.24 s` as seconds (the harness's `fmt_time` read back)."""
    match = re.fullmatch(r"([0-9.]+) (µs|us|ms|s)", cell.strip())
    if match is None:
        raise ValueError(f"not a time: {cell!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def read(path: Path) -> tuple[list[h.Row], str]:
    """The rows of the file's `table` section, and its `- Machine:` line."""
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no table section")
    section = text.split(START, 1)[1].split(END, 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    if tuple(header) != h.RATIO_HEADER:
        raise ValueError(f"{path}: header {header}, expected {list(h.RATIO_HEADER)}")
    rows = []
    for line in lines[2:]:
        label, eqx, fbx, ratio = (cell.strip() for cell in line.strip("|").split("|"))
        row = h.Row(label, seconds(eqx), seconds(fbx))
        if h.fmt_ratio(row.ratio) != ratio:
            h.log(f"  {label}: ratio {h.fmt_ratio(row.ratio)} from the times, {ratio} in the file")
        rows.append(row)
    machine = re.search(r"^- Machine: (.*)$", text, re.MULTILINE)
    return rows, machine.group(1) if machine else path.stem


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("names", nargs="*", default=["compare_family_h200"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        rows, machine = read(h.RESULTS / f"{name}.md")
        path = args.out / f"{name}{'_tiny' if args.tiny else ''}.png"
        h.plot(rows, path, f"eqx_replay / Flashbax — {machine}")
        h.log(f"Wrote {path} ({len(rows)} rows)")


if __name__ == "__main__":
    sys.exit(main())
