"""Score the caption judge on the labelled cases in tests/fixtures/judge_cases/, and time it.

    .venv/bin/python tools/eval_judge.py              # precision/recall per verdict and per family
    .venv/bin/python tools/eval_judge.py --errors     # every case the judge gets wrong, with its reason
    .venv/bin/python tools/eval_judge.py --bench      # captions/s of the fact model and of judge()

Precision of a rejection kind: of the candidates the judge rejected with it, the share labelled so;
recall: of the candidates labelled with it, the share the judge rejected with it. "accepted" is scored
the same way (its recall is the share of faithful captions that survive). The bench compares against
the floor a user would otherwise pick: the regex lexicon the project had before (re-implemented in
`tools/old_lexicon.py`), on the same captions.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.text.judge import REASONS, Consensus, judge  # noqa: E402

CASES = ROOT / "tests" / "fixtures" / "judge_cases"
HELDOUT = CASES / "heldout"
KINDS = ("accepted", *REASONS)


def load_cases(folder: Path = CASES) -> list[dict]:
    cases = []
    for path in sorted(folder.glob("*.yaml")):
        for c in yaml.safe_load(path.read_text())["cases"]:
            cases.append({**c, "file": path.name})
    return cases


def verdict(case: dict) -> tuple[str, str]:
    ok, reason = judge(case["candidate"], case["inputs"], case.get("evidence"))
    return ("accepted", "") if ok else (reason.split(":", 1)[0], reason)


def score(cases: list[dict], judge_fn=None) -> dict:
    """{kind: {"precision", "recall", "support", "predicted"}}, overall accuracy, per-family accuracy.

    `judge_fn(case) -> verdict` scores another judge (the old guard) on the same cases."""
    pairs = [(c["verdict"], (judge_fn or (lambda c: verdict(c)[0]))(c)) for c in cases]
    out = {}
    for k in KINDS:
        tp = sum(1 for want, got in pairs if want == k and got == k)
        pred = sum(1 for _, got in pairs if got == k)
        sup = sum(1 for want, _ in pairs if want == k)
        out[k] = {"precision": tp / pred if pred else 1.0, "recall": tp / sup if sup else 1.0,
                  "support": sup, "predicted": pred}
    tp = sum(1 for want, got in pairs if want != "accepted" and got != "accepted")
    pred = sum(1 for _, got in pairs if got != "accepted")
    sup = sum(1 for want, _ in pairs if want != "accepted")
    out["rejected (any reason)"] = {"precision": tp / pred if pred else 1.0, "recall": tp / sup if sup else 1.0,
                                    "support": sup, "predicted": pred}
    fam = defaultdict(lambda: [0, 0])
    for c, (want, got) in zip(cases, pairs, strict=True):
        fam[c["kind"]][0] += want == got
        fam[c["kind"]][1] += 1
    accuracy = sum(w == g for w, g in pairs) / max(len(pairs), 1)
    return {"kinds": out, "accuracy": accuracy, "cases": len(cases), "families": dict(fam)}


def table(s: dict) -> str:
    lines = ["| verdict | cases | precision | recall |", "|---|---:|---:|---:|"]
    for k, v in s["kinds"].items():
        p = f"{100 * v['precision']:.1f}%" if v["predicted"] else "n/a (never said)"
        lines.append(f"| {k} | {v['support']} | {p} | {100 * v['recall']:.1f}% |")
    lines.append(f"| all | {s['cases']} | accuracy {100 * s['accuracy']:.1f}% | |")
    return "\n".join(lines)


def bench(cases: list[dict], repeat: int = 20) -> None:
    from pipeline.text import facts
    from tools.old_lexicon import extract as old_extract

    texts = sorted({t for c in cases for t in (*c["inputs"], c["candidate"])})
    print(f"{len(texts)} distinct captions, {repeat} passes each, caches cleared per pass")

    def run(fn) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(repeat):
                facts.extract.cache_clear()
                for t in texts:
                    fn(t)
            best = min(best, time.perf_counter() - t0)
        return len(texts) * repeat / best

    new = run(facts.extract)
    old = run(old_extract)
    print(f"fact model (facts.extract): {new:,.0f} captions/s")
    print(f"old regex lexicon:          {old:,.0f} captions/s   (ratio new/old {new / old:.2f}x)")
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        facts.extract.cache_clear()
        for c in cases:
            Consensus(c["inputs"], c.get("evidence")).judge(c["candidate"])
            n += 1
    dt = time.perf_counter() - t0
    per = sum(len(c["inputs"]) + 1 for c in cases) * repeat / dt
    print(f"judge(): {n / dt:,.0f} candidates/s with their inputs ({per:,.0f} captions/s read)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--errors", action="store_true", help="print every case the judge gets wrong")
    ap.add_argument("--bench", action="store_true", help="time the fact model and the judge")
    ap.add_argument("--set", choices=["dev", "heldout"], default="dev",
                    help="dev: the cases the judge was built against; heldout: cases written apart, never tuned on")
    args = ap.parse_args()
    cases = load_cases(CASES if args.set == "dev" else HELDOUT)
    s = score(cases)
    print(f"facecurate judge, {args.set} set:")
    print(table(s))
    from tools.old_lexicon import old_judge

    print(f"\nthe guard before the fact model (no votes: it cannot say inconsistent), {args.set} set:")
    print(table(score(cases, lambda c: old_judge(c["candidate"], c["inputs"], c.get("evidence")))))
    print()
    for fam, (ok, n) in sorted(s["families"].items()):
        print(f"  {fam:28s} {ok:3d}/{n:<3d}")
    if args.errors:
        confusion = Counter()
        for c in cases:
            got, why = verdict(c)
            if got != c["verdict"]:
                confusion[(c["verdict"], got)] += 1
                print(f"\n[{c['file']}:{c['id']}] want {c['verdict']}, got {got} {why}")
                for t in c["inputs"]:
                    print(f"   in: {t}")
                if c.get("evidence"):
                    print(f"   ev: {c['evidence']}")
                print(f"  cand: {c['candidate']}")
        print("\nconfusion (want, got):", dict(confusion))
    if args.bench:
        bench(cases)


if __name__ == "__main__":
    main()
