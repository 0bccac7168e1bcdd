"""Generate the example domain dataset: client financial-summary drafting for an advisory firm.

One narrow, realistic task whose facts are all given in the prompt. The user turn is a client fact
sheet (name, age, risk profile, holdings with amounts, cash, goals, recent changes); the assistant turn
is the summary an adviser files after a review, in the firm's fixed house style, using exactly those
facts and nothing else (no arithmetic, no invented figures). The only judgement in it is the closing
"Next step", which follows the firm's rule for each risk profile. Phrases are short on purpose: the demo
fine-tunes tiny-llama on two CPU cores in a few minutes, and every token costs time there.

The output is reproducible: the same seed and counts always give byte-identical files (a test checks
that the committed files are what this script writes). Train and eval are drawn from one seeded
stream and no eval client sheet repeats a training one, so eval scores are honest.

    python examples/make_dataset.py                     # writes examples/data/{train,eval}.jsonl
    python examples/make_dataset.py --out DIR --train 1200 --eval 120 --seed 7
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

SYSTEM = "Provide the client summary report based only on the given facts."

FIRST = """Maria James Aisha Tom Priya Daniel Grace Omar Elena Samuel Hannah Lucas Mei Peter Fatima George Laura
Ivan Chloe Ahmed Nina Robert Sofia Kevin Amara Paul Julia Victor Rosa Henry Leila Martin Anna David Zoe Frank Irene
Carlos Ruth Noah""".split()
LAST = """Lopez Okafor Chen Patel Novak Murphy Schmidt Rossi Kim Haddad Silva Brown Walsh Tanaka Singh Dubois Berg
Costa Evans Khan Meyer Reid Moreau Ali Grant Fischer Hughes Lindqvist Osei Price""".split()
RISK = ["conservative", "moderate", "balanced", "growth", "aggressive"]
NEXT_STEP = {  # the firm's rule: what the closing line says for each risk profile
    "conservative": "keep capital safe and review bond exposure each year.",
    "moderate": "keep the current allocation and rebalance once a year.",
    "balanced": "keep equities near half of the portfolio and rebalance each year.",
    "growth": "stay invested for the long term and review equity exposure each quarter.",
    "aggressive": "confirm the client still accepts large swings before adding risk.",
}
HOLDINGS = [
    "global equity fund", "US index fund", "bond fund", "government bonds", "dividend stocks", "money market fund",
    "property fund", "growth fund", "income fund", "emerging markets fund",
]
GOALS = [
    "retire at {age_goal}", "buy a home in {year}", "pay off the mortgage by {year}", "fund university costs from {year}",
    "leave an estate to the family", "keep a steady income in retirement", "build cash savings of {small}",
]
CHANGES = [
    "sold {small} of stocks", "inherited {big}", "started a {monthly} monthly contribution", "moved {small} from bonds to cash",
    "withdrew {small} for home repairs", "added {small} to the equity fund", "rolled over a pension of {big}",
    "no changes since the last review",
]


def money(amount: int) -> str:
    return f"${amount:,}"


def client(rng: random.Random) -> dict:
    """One client's facts, every number already formatted as it will appear."""
    age = rng.randint(28, 78)
    facts = {
        "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        "age": age,
        "risk": rng.choice(RISK),
        "holdings": [(name, money(rng.randrange(5_000, 400_000, 500))) for name in rng.sample(HOLDINGS, rng.choice((1, 2, 2, 3)))],
        "cash": money(rng.randrange(1_000, 80_000, 500)),
    }
    fill = {
        "age_goal": max(age + 2, rng.randint(58, 70)),
        "year": rng.randint(2027, 2040),
        "small": money(rng.randrange(2_000, 40_000, 500)),
        "big": money(rng.randrange(20_000, 250_000, 1_000)),
        "monthly": money(rng.randrange(200, 3_000, 50)),
    }
    facts["goals"] = [g.format(**fill) for g in rng.sample(GOALS, rng.choice((1, 1, 2)))]
    facts["changes"] = [c.format(**fill) for c in rng.sample(CHANGES[:-1], rng.choice((1, 1, 2)))] if rng.random() < 0.85 else [CHANGES[-1]]
    return facts


def prompt(c: dict) -> str:
    return "\n".join(
        [
            f"Client: {c['name']}",
            f"Age: {c['age']}",
            f"Risk: {c['risk']}",
            "Holdings: " + "; ".join(f"{name} {amount}" for name, amount in c["holdings"]),
            f"Cash: {c['cash']}",
            "Goals: " + "; ".join(c["goals"]),
            "Changes: " + "; ".join(c["changes"]),
        ]
    )


def summary(c: dict) -> str:
    """The house style: fixed headings, the facts verbatim, the risk profile's next step."""
    return "\n".join(
        [
            f"Summary for {c['name']}, {c['age']}, {c['risk']} risk.",
            "Holdings: " + ", ".join(f"{name} {amount}" for name, amount in c["holdings"]) + f"; cash {c['cash']}.",
            "Goals: " + "; ".join(c["goals"]) + ".",
            "Changes: " + "; ".join(c["changes"]) + ".",
            f"Next step: {NEXT_STEP[c['risk']]}",
        ]
    )


def generate(n_train: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[str] = []
    while len(rows) < n_train + n_eval:
        c = client(rng)
        user = prompt(c)
        if user in seen:  # no duplicates, and no eval sheet that is also a training sheet
            continue
        seen.add(user)
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
            {"role": "assistant", "content": summary(c)},
        ]
        rows.append(json.dumps({"messages": messages}, ensure_ascii=False))
    return rows[:n_train], rows[n_train:]


def write_atomic(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("".join(line + "\n" for line in lines))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--train", type=int, default=1200)
    parser.add_argument("--eval", type=int, default=120)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    train, eval_ = generate(args.train, args.eval, args.seed)
    write_atomic(args.out / "train.jsonl", train)
    write_atomic(args.out / "eval.jsonl", eval_)
    print(f"wrote {len(train)} train and {len(eval_)} eval examples to {args.out}")


if __name__ == "__main__":
    main()
