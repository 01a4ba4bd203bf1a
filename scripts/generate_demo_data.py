"""Write the demo datasets under data/demo/ (committed; rerun only to change them). Small, deterministic tasks
a tiny model learns within a few dozen steps, so a falling loss is visible on a CPU."""

import json
import random
from pathlib import Path

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "garden",
    "window",
    "yellow",
    "market",
    "silver",
    "candle",
    "forest",
    "bridge",
    "pencil",
    "winter",
    "orange",
    "rocket",
    "planet",
    "dragon",
    "castle",
    "mirror",
    "summer",
    "ticket",
    "meadow",
    "harbor",
    "lantern",
    "violet",
    "copper",
    "falcon",
    "island",
    "puzzle",
]


def sft_records(rng: random.Random, count: int) -> list[dict]:
    records = []
    for _ in range(count):
        task = rng.randrange(4)
        if task == 0:
            a, b = rng.randrange(50), rng.randrange(50)
            records.append({"instruction": f"Add {a} and {b}.", "input": "", "output": f"{a} plus {b} is {a + b}."})
        elif task == 1:
            word = rng.choice(WORDS)
            records.append(
                {"instruction": "Reverse the word.", "input": word, "output": f"{word} reversed is {word[::-1]}."}
            )
        elif task == 2:
            n = rng.randrange(100)
            records.append(
                {"instruction": f"What number comes after {n}?", "input": "", "output": f"After {n} comes {n + 1}."}
            )
        else:
            word = rng.choice(WORDS)
            records.append(
                {
                    "instruction": "Write the word in capitals.",
                    "input": word,
                    "output": f"{word} in capitals is {word.upper()}.",
                }
            )
    return records


def pt_records(rng: random.Random, count: int) -> list[dict]:
    return [
        {"text": " ".join(f"{r['instruction']} {r['input']} {r['output']}".split())} for r in sft_records(rng, count)
    ]


def main() -> None:
    data = Path(__file__).resolve().parent.parent / "data"
    (data / "demo").mkdir(parents=True, exist_ok=True)
    (data / "demo" / "sft.json").write_text(json.dumps(sft_records(random.Random(0), 512), indent=1) + "\n")
    (data / "demo" / "pt.json").write_text(json.dumps(pt_records(random.Random(1), 512), indent=1) + "\n")
    dataset_info = {
        "demo_sft": {"file_name": "demo/sft.json"},
        "demo_pt": {"file_name": "demo/pt.json", "columns": {"prompt": "text"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(dataset_info, indent=2) + "\n")


if __name__ == "__main__":
    main()
