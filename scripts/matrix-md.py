#!/usr/bin/env python3
"""Keeps MATRIX.md and the replay tokens quoted elsewhere in step with the code.

Any change that adds, removes or reorders a scheduling point changes every
schedule, so the tokens recorded in the documents stop replaying. This
script, given the JSON of a default matrix run, rewrites MATRIX.md's four
generated tables (proved verdicts per cell, the verdict table, the
violated cells with their tokens, and the undecided cells with the size
of their searches), records the tokens of the fix and
variant files again, replaces the old tokens wherever they are quoted
(README.md, scripts/newcomer-check.sh, docs/), and replays every token to
check it still shows a violation (exit 1).

    cargo build --release
    target/release/dmabuf matrix --json --quiet > /tmp/matrix.json
    scripts/matrix-md.py /tmp/matrix.json            # prints what would change
    scripts/matrix-md.py /tmp/matrix.json --write    # and writes it

Prose around the tables (counts, timings) is not touched: the script prints
the figures it found so they can be checked by hand.
"""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DMABUF = os.path.join(ROOT, "target", "release", "dmabuf")
# Registry order (crates/dmabuf-checker/src/property.rs) and codes.
PROPS = [
    ("s-fence", "F"),
    ("s-final", "X"),
    ("s-noreuse", "N"),
    ("l-bounded", "L"),
    ("no-deadlock", "D"),
    ("no-leak", "K"),
    ("lockdep", "V"),
    ("no-warn", "W"),
    ("l-restore", "R"),
]
TOKEN = re.compile(r"dmabuf3,[A-Za-z0-9_.+-]+,[0-9a-f]{16},[a-z0-9]+,\d+,(?:normal|stalled),[0-9a-z.]+,[0-9a-f]{8}")
PROSE_FILES = ["README.md", "scripts/newcomer-check.sh", "docs/matrix.md", "docs/report.md", "MATRIX.md"]


def grid(m, cell_text):
    pols, imps = m["policies"], m["importers"]
    cells = {(c["policy"], c["importer"]): c for c in m["cells"]}
    out = ["| | " + " | ".join(imps) + " |", "|---" * (len(imps) + 1) + "|"]
    for p in pols:
        out.append("| " + p + " | " + " | ".join(cell_text(cells.get((p, i))) for i in imps) + " |")
    return out


def accepted(c):
    return c is not None and c.get("attach") == "accepted"


def proofs_table(m):
    def text(c):
        if c is None:
            return "-"
        if not accepted(c):
            return "refused"
        ps = c["properties"]
        own = sum(1 for p in ps.values() if p["verdict"] == "proved")
        reduced = sum(1 for p in ps.values() if p["verdict"] == "proved-reduced")
        return f"{own}/{len(ps)}" + (f"+{reduced}r" if reduced else "")

    return grid(m, text)


def verdict_table(m):
    def text(c):
        if c is None:
            return "-"
        if not accepted(c):
            return "refused"
        bad = [code for name, code in PROPS if c["properties"].get(name, {}).get("result") == "violated"]
        err = "!" if c.get("errors") else ""
        return (" ".join(bad) if bad else "ok") + err

    return grid(m, text)


def accepted_cells(m):
    """(policy, importer, cell) of every accepted cell, in table order."""
    cells = {(c["policy"], c["importer"]): c for c in m["cells"]}
    for p in m["policies"]:
        for i in m["importers"]:
            c = cells.get((p, i))
            if accepted(c):
                yield p, i, c


def token_table(m):
    out = ["| cell | property (answer, violating runs) | token |", "|---|---|---|"]
    for p, i, c in accepted_cells(m):
        rows = {}
        for name, _ in PROPS:
            r = c["properties"].get(name)
            if not r or r.get("result") != "violated" or not r.get("replay"):
                continue
            rows.setdefault(r["replay"], []).append(
                f"{name} ({r['answer']}, {r['violations']}/{r['schedules']})"
            )
        for tok, ps in rows.items():
            out.append(f"| {p} × {i} | {', '.join(ps)} | `{tok}` |")
    return out


UNDECIDED_HEADER = "| undecided cell | searched | executions run | a complete search, estimated from its progress |"


def about(n):
    """n rounded to two significant digits, thousands separated."""
    scale = 1
    while n // scale >= 100:
        scale *= 10
    return f"{(n + scale // 2) // scale * scale:,}"


def undecided_table(m):
    """Cells with a property neither proved (in full or reduced) nor violated,
    with what their last proof attempt ran and would take in all."""
    out = [UNDECIDED_HEADER, "|---|---|---|---|"]
    for p, i, c in accepted_cells(m):
        open_ = [
            r for r in c["properties"].values()
            if r["result"] == "holds" and r["verdict"] not in ("proved", "proved-reduced")
        ]
        proofs = [r["proof"] for r in open_ if r.get("proof")]
        if not open_ or not proofs:
            continue
        q = max(proofs, key=lambda q: sum((q.get("estimated-executions") or {}).values()))
        est = q.get("estimated-executions") or {}
        modes = " + ".join(f"{about(n)} {mode}" for mode, n in sorted(est.items(), reverse=True))
        if "normal" not in est:
            modes += " (normal: not attempted)"
        out.append(f"| {p} × {i} | `{q['config']}` | {q['executions']:,} | {modes or '-'} |")
    return out


def replace_table(lines, header, new, nth=0):
    """Replaces the nth table whose first row is `header` with `new`."""
    seen = 0
    for k, l in enumerate(lines):
        if l == header:
            if seen == nth:
                end = k
                while end < len(lines) and lines[end].startswith("|"):
                    end += 1
                return lines[:k] + new + lines[end:]
            seen += 1
    raise SystemExit(f"MATRIX.md: no table {nth} with header {header!r}")


def run(args):
    p = subprocess.run([DMABUF] + args, capture_output=True, text=True, cwd=ROOT)
    return p.returncode, p.stdout, p.stderr


def lib_for(scenario):
    """The protocol file a fix or variant token's scenario comes from."""
    base = scenario.split(".jobs")[0]
    for d in ("protocols/fixes", "protocols/variants"):
        f = os.path.join(d, base + ".toml")
        if os.path.exists(os.path.join(ROOT, f)):
            return f
    return None


def fresh_lib_token(old):
    """The token the same file (or built-in scenario), property and mode give now."""
    scen, mode = old.split(",")[1], old.split(",")[5]
    # A fix or variant file, else a built-in scenario.
    f = lib_for(scen) or scen.split(".jobs")[0]
    _, out, _ = run(["check", f, "--json", "--quiet"])
    rep = json.loads(out)
    reports = rep if isinstance(rep, list) else rep.get("questions", [rep])
    for r in reports:
        for name, _ in PROPS:
            p = r.get("properties", {}).get(name)
            if p and p.get("result") == "violated" and p.get("replay"):
                t = p["replay"]
                if t.split(",")[1].split(".jobs")[0] == scen.split(".jobs")[0] and t.split(",")[5] == mode:
                    return t, f"{f}: {name} {p['answer']} {p['violations']}/{p['schedules']}"
    return None, f"{f}: no violated property in mode {mode}"


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    write = "--write" in sys.argv[2:]
    m = json.load(open(sys.argv[1]))
    path = os.path.join(ROOT, "MATRIX.md")
    lines = open(path).read().split("\n")
    header = "| | " + " | ".join(m["importers"]) + " |"
    lines = replace_table(lines, header, proofs_table(m), 0)
    lines = replace_table(lines, header, verdict_table(m), 1)
    lines = replace_table(lines, "| cell | property (answer, violating runs) | token |", token_table(m), 0)
    lines = replace_table(lines, UNDECIDED_HEADER, undecided_table(m), 0)
    text = "\n".join(lines)

    # Tokens quoted outside the generated tables: matrix cells by scenario
    # (first violated property of the same mode), fix and variant files by
    # a fresh check of the file.
    by_cell = {}
    for c in m["cells"]:
        for name, _ in PROPS:
            r = c.get("properties", {}).get(name)
            if r and r.get("result") == "violated" and r.get("replay"):
                t = r["replay"]
                by_cell.setdefault((t.split(",")[1], t.split(",")[5]), t)
    mapping = {}
    texts = {f: open(os.path.join(ROOT, f)).read() for f in PROSE_FILES}
    texts["MATRIX.md"] = text
    for f, t in texts.items():
        for old in TOKEN.findall(t):
            if old in mapping or old in by_cell.values():
                continue
            key = (old.split(",")[1], old.split(",")[5])
            if key in by_cell:
                mapping[old] = by_cell[key]
            else:
                new, note = fresh_lib_token(old)
                print(f"  {note}")
                if new:
                    mapping[old] = new
    for f in texts:
        for old, new in mapping.items():
            texts[f] = texts[f].replace(old, new)
    changed = [f for f in texts if texts[f] != open(os.path.join(ROOT, f)).read()]
    print(f"tokens replaced: {sum(1 for o, n in mapping.items() if o != n)}; files changed: {', '.join(changed) or 'none'}")
    print(
        f"cells proved: {m['cells-proved']} of {m['cells-accepted']}; decided: {m['cells-decided']}"
        f" (+{m.get('cells-decided-reduced', 0)} with proofs of the smallest configuration);"
        f" verdicts proved: {m['properties-proved']} of {m['properties-judged']}"
        f" (+{m.get('properties-proved-reduced', 0)} reduced); runs {m['runs']}"
    )
    if not write:
        return
    for f in changed:
        open(os.path.join(ROOT, f), "w").write(texts[f])
    # Every token quoted anywhere must replay as a violation.
    bad = 0
    toks = sorted({t for f in PROSE_FILES for t in TOKEN.findall(texts[f])})
    for t in toks:
        f = lib_for(t.split(",")[1]) if not t.split(",")[1].startswith("matrix.") else None
        code, _, err = run((["--lib", f] if f else []) + ["replay", t])
        if code != 1:
            bad += 1
            print(f"  does not replay as a violation (exit {code}): {t}\n    {err.strip()[:300]}")
    print(f"replayed {len(toks)} tokens: {len(toks) - bad} show their violation")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
