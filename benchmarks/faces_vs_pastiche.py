"""Do faces survive?  Atelier with ``protect_faces`` off and on against ``pastiche``.

For each portrait × style this runs, at ``--size`` with ``--seed``, each as a whole job in a
fresh process (style_vs_pastiche.py's runners):

* pastiche with its defaults (1000 L-BFGS steps), or its image and time from an earlier
  run of this script (``--pastiche-from``; ``--pastiche-only`` writes them);
* our engine's default (faces protected) and the same with ``--no-protect-faces``.

Each result is judged by style_vs_pastiche.py's judge (pastiche's own VGG19): the
whole-image content and style distances, and the *face* content distance, the judge's
relu4_2 content distance on the crop of each face box (our detector's boxes on the
content, in output pixels; the same crops for all three results).  Targets (the issue's):
face distance ≤ 0.8 × pastiche's, style distance ≤ 1.05 × pastiche's, time ≤ 0.1 ×
pastiche's.  Writes ``results/faces_vs_pastiche.json`` and a contact sheet
(content | pastiche | ours, off | ours, on, face boxes drawn on the content).

    .venv/bin/python benchmarks/faces_vs_pastiche.py --size 512

Portraits: ``astronaut.png`` from ../shared/data (public domain, NASA); extra ones by
path, e.g. matplotlib's ``grace_hopper.jpg`` (U.S. Navy photo, public domain; in the
matplotlib wheel under mpl-data/sample_data/):
``--portraits astronaut.png:shipwreck.jpg /path/grace_hopper.jpg:shipwreck.jpg``.
``--held-out`` names portraits (or single portrait × style pairs) the protection was not
tuned on (reported apart);
``--no-pastiche NAME`` runs only our two sides for a portrait (no pastiche targets).
Pastiche's 1000 steps take minutes to hours on a busy CPU: ``--pastiche-only`` runs it
alone and ``--pastiche-from DIR --wait-pastiche S`` takes its result when it is done;
``--reuse-ours`` judges our images from an earlier run of this script again, and
``--pastiche-earlier JSON`` takes pastiche's judged numbers for a pair (same size and seed)
from an earlier results file when its image is not at hand (marked ``from_earlier_run``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.style_vs_pastiche import (  # noqa: E402  (the repository root, above)
    CONTENT_LAYER,
    PASTICHE_STEPS,
    RESULTS,
    ROOT,
    Judge,
    contact_sheet,
    machine,
    run_ours,
    run_pastiche,
)
from worker.engines import faces  # noqa: E402

PORTRAITS = ("astronaut.png:shipwreck.jpg",)
FACE_TARGET, STYLE_TARGET, TIME_TARGET = 0.8, 1.05, 0.1


def face_distances(
    judge: Judge, output: Image.Image, content: Image.Image, boxes: list[list[int]]
) -> list[float]:
    """The judge's content distance on each face box's crop of ``output`` and ``content``
    (the content resized to the output first, as the judge does)."""
    content = content.convert("RGB").resize(output.size, Image.Resampling.BILINEAR)
    distances = []
    for x, y, w, h in boxes:
        crop = (x, y, x + w, y + h)
        fo = judge._features(output.crop(crop))[CONTENT_LAYER]
        fc = judge._features(content.crop(crop))[CONTENT_LAYER]
        distances.append(float((fo - fc).norm() / fc.norm()))
    return distances


def judged(
    judge: Judge, image: Path, content: Image.Image, style: Image.Image, boxes: list
) -> dict:
    with Image.open(image) as out:
        out.load()
    content_d, style_d = judge.distances(out, content, style)
    face_d = face_distances(judge, out, content, boxes)
    return {
        "content_distance": content_d,
        "style_distance": style_d,
        "face_distances": face_d,
        "face_distance": sum(face_d) / len(face_d) if face_d else None,
    }


def pastiche_record(
    name: str, paths: tuple[Path, Path], workdir: Path, args: argparse.Namespace, env: dict
) -> tuple[Path, dict] | None:
    """Pastiche's image and whole-job seconds: run now, or from ``--pastiche-from``
    (None when that run has not finished within ``--wait-pastiche``)."""
    image = workdir / f"{name}_{args.size}_pastiche.png"
    timing = image.with_suffix(".json")
    if args.pastiche_from is not None:
        source = args.pastiche_from / image.name
        deadline = time.monotonic() + args.wait_pastiche
        while not source.with_suffix(".json").exists() and time.monotonic() < deadline:
            time.sleep(10)  # a --pastiche-only run started earlier is still going
        if not source.with_suffix(".json").exists():
            return None
        return source, json.loads(source.with_suffix(".json").read_text())
    seconds = run_pastiche(*paths, image, args.size, args.seed, env)
    record = {"seconds": round(seconds, 2), "steps": PASTICHE_STEPS}
    timing.write_text(json.dumps(record) + "\n")
    return image, record


def benchmark(args: argparse.Namespace) -> dict:
    judge = Judge()
    workdir = args.results / "tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    records, rows = [], []
    for spec in args.portraits:
        content_name, style_name = spec.split(":")
        content_path = args.data / "content" / content_name
        style_path = args.data / "style" / style_name
        name = f"{content_path.stem}_x_{style_path.stem}"
        with Image.open(content_path) as c, Image.open(style_path) as s:
            content, style = c.convert("RGB"), s.convert("RGB")
        with_pastiche = content_path.stem not in args.no_pastiche
        if args.pastiche_only:
            if with_pastiche:
                theirs = pastiche_record(name, (content_path, style_path), workdir, args, env)
                print(f"{name}: pastiche {theirs[1]['seconds']:.1f}s", flush=True)
            continue
        sides = {}
        for side, extra in (("off", ["--no-protect-faces"]), ("on", [])):
            out = workdir / f"{name}_{args.size}_ours_{side}.png"
            sides[side] = ours_side((content_path, style_path), out, args, env, extra)
        theirs = earlier = None
        if with_pastiche:  # after ours: an earlier --pastiche-only run may finish meanwhile
            theirs = pastiche_record(name, (content_path, style_path), workdir, args, env)
        if theirs is None and args.pastiche_earlier is not None:
            earlier = _earlier_pastiche(args.pastiche_earlier, name, args)
        boxes = sides["on"][2]["faces"]["boxes"]
        record: dict = {
            "portrait": name,
            "size": args.size,
            "seed": args.seed,
            "held_out": content_path.stem in args.held_out or name in args.held_out,
            "faces": sides["on"][2]["faces"],
            "protect": sides["on"][2].get("protect"),
        }
        for side, (out, seconds, metrics, timed) in sides.items():
            record[f"ours_{side}"] = {
                "seconds": seconds,
                "timed": timed,
                **judged(judge, out, content, style, boxes),
                "engine_seconds": metrics["seconds"],
            }
        row = [content]
        if theirs is None and with_pastiche:
            record["pastiche"] = None  # its --pastiche-only run did not finish in time
        if earlier is not None:  # judged numbers of an earlier run of this script
            record["pastiche"] = earlier
            record["targets"] = targets(record)
            row.append(_blank(content.size, "pastiche: earlier run"))
        elif theirs is not None:
            record["pastiche"] = {**theirs[1], **judged(judge, theirs[0], content, style, boxes)}
            record["targets"] = targets(record)
            with Image.open(theirs[0]) as p:
                row.append(p.convert("RGB"))
        else:  # keep the columns aligned: a blank where pastiche was not run
            row.append(_blank(content.size, "pastiche not run"))
        row += [Image.open(sides[s][0]).convert("RGB") for s in ("off", "on")]
        rows.append(_boxed(row, boxes))
        records.append(record)
        print(_line(record), flush=True)
    result = {"size": args.size, "portraits": records}
    if rows:
        labels = ["content (face boxes)", "pastiche (1000 L-BFGS)", "ours, faces off", "ours"]
        contact_sheet(rows, labels, height=256).save(args.results / "faces_vs_pastiche.png")
    return result


def ours_side(
    paths: tuple[Path, Path],
    out: Path,
    args: argparse.Namespace,
    env: dict,
    extra: list[str],
) -> tuple[Path, float, dict, str]:
    """Run ours as a whole job (image, seconds, metrics, how timed); with ``--reuse-ours``
    an image already in the work folder is judged again, timed by its earlier whole-job
    run when that was recorded, else by the engine's own seconds (no start-up, no load)."""
    timing = out.with_name(out.stem + "_seconds.json")
    if not (args.reuse_ours and out.exists()):
        seconds = round(run_ours(*paths, out, args.size, args.seed, env, extra), 2)
        timing.write_text(json.dumps({"seconds": seconds}) + "\n")
    metrics = json.loads(out.with_suffix(".json").read_text())
    if timing.exists():
        return out, json.loads(timing.read_text())["seconds"], metrics, "whole job"
    return out, metrics["seconds"], metrics, "engine only (reused image)"


def _earlier_pastiche(path: Path, name: str, args: argparse.Namespace) -> dict | None:
    """Pastiche's record for ``name`` from an earlier results file of this script at the
    same size and seed (its image is not kept), marked with that run's start; None when
    it has none."""
    earlier = json.loads(path.read_text())
    for record in earlier.get("portraits", []):
        same = record["size"] == args.size and record["seed"] == args.seed
        if record["portrait"] == name and same and record.get("pastiche"):
            return {**record["pastiche"], "from_earlier_run": earlier.get("started_at")}
    return None


def targets(record: dict) -> dict:
    """The issue's three targets for our default against pastiche."""
    ours, theirs = record["ours_on"], record["pastiche"]
    face = ours["face_distance"] / theirs["face_distance"] if ours["face_distance"] else None
    style = ours["style_distance"] / theirs["style_distance"]
    seconds = ours["seconds"] / theirs["seconds"]
    return {
        "face_ratio": None if face is None else round(face, 4),
        "style_ratio": round(style, 4),
        "time_ratio": round(seconds, 4),
        "face_met": face is not None and face <= FACE_TARGET,
        "style_met": style <= STYLE_TARGET,
        "time_met": seconds <= TIME_TARGET,
    }


def _boxed(row: list[Image.Image], boxes: list[list[int]]) -> list[Image.Image]:
    """The row with the face boxes outlined on its content image (scaled to its size)."""
    content = row[0].resize(row[-1].size)
    draw = ImageDraw.Draw(content)
    for x, y, w, h in boxes:
        draw.rectangle((x, y, x + w, y + h), outline=(255, 220, 0), width=3)
    return [content, *row[1:]]


def _blank(size: tuple[int, int], text: str) -> Image.Image:
    image = Image.new("RGB", size, (235, 235, 235))
    ImageDraw.Draw(image).text((10, size[1] // 2), text, fill="black")
    return image


def _line(record: dict) -> str:
    parts = [f"{record['portrait']:28s}"]
    for side in ("pastiche", "ours_off", "ours_on"):
        r = record.get(side)
        if r is not None:
            parts.append(
                f"{side} {r['seconds']:.0f}s face={r['face_distance']:.3f} "
                f"c={r['content_distance']:.3f} s={r['style_distance']:.4f}"
            )
    if "targets" in record:
        parts.append(str(record["targets"]))
    return " | ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--portraits", nargs="+", default=list(PORTRAITS), metavar="C:S")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument(
        "--held-out",
        nargs="*",
        default=[],
        metavar="NAME",
        help="a portrait's stem (every pair) or one pair, CONTENT_x_STYLE (stems)",
    )
    parser.add_argument("--no-pastiche", nargs="*", default=[], metavar="STEM")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--pastiche-only", action="store_true")
    parser.add_argument("--pastiche-from", type=Path, default=None, metavar="DIR")
    parser.add_argument(
        "--pastiche-earlier",
        type=Path,
        default=None,
        metavar="JSON",
        help="pastiche's numbers from an earlier results file where no image is at hand",
    )
    parser.add_argument(
        "--reuse-ours", action="store_true", help="judge our images already in the work folder"
    )
    parser.add_argument(
        "--wait-pastiche",
        type=float,
        default=0.0,
        metavar="S",
        help="with --pastiche-from: wait up to S seconds for a --pastiche-only run to finish",
    )
    args = parser.parse_args(argv)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result = benchmark(args)
    if args.pastiche_only:
        return 0
    result["machine"] = machine("cpu")
    result["started_at"] = started_at
    result["detector"] = faces.DETECTOR
    result["factor"] = faces.PROTECT_FACTOR
    result["face_budget"] = faces.FACE_BUDGET
    out = args.results / "faces_vs_pastiche.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
