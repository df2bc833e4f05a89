"""``salip prompts``: generate, list or show description prompts."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from salip.apps.cli.flags import Subparsers, add_dataclass_flags, comma_list
from salip.apps.new_targets import OVERRIDE_FIELDS, create_target
from salip.apps.prompt_generation import GenerationConfig, generate_prompts, resolve_targets
from salip.core.errors import ConfigError
from salip.core.organs import get_organ
from salip.core.prompts import BACKGROUND, list_entries, load_prompt_file, prompt_path, prompts_dir
from salip.core.targets import name_key

__all__ = [
    "add_parser",
    "run_generate",
    "run_list",
    "run_show",
]

logger = logging.getLogger("salip")


def add_parser(sub: Subparsers, common: argparse.ArgumentParser) -> None:
    """``salip prompts generate``, ``list`` and ``show``."""
    prompts = sub.add_parser("prompts", help="Generate, list or show description prompts.")
    psub = prompts.add_subparsers(dest="prompts_command", required=True, metavar="ACTION")
    pdir = argparse.ArgumentParser(add_help=False)
    pdir.add_argument(
        "--prompts-dir",
        metavar="DIR",
        help="Prompt folder (default: $SALIP_PROMPTS_DIR, else the packaged prompts).",
    )
    gen = psub.add_parser(
        "generate",
        parents=[common, pdir],
        help="Ask a language model (any OpenAI-compatible endpoint) for descriptions, or "
        "to define a new target (--new).",
        description="Writes N visual descriptions per organ into the prompt cache, with "
        "provenance. The key is read from OPENAI_API_KEY; --base-url or OPENAI_BASE_URL "
        "selects the endpoint. Nothing is written unless every organ succeeds. With --new, "
        "the model first defines a new target (synonyms, modalities, regions, laterality, "
        "CT window), which is checked, and the target is written with its descriptions "
        "into a user prompt set (--prompts-dir or SALIP_PROMPTS_DIR).",
    )
    gen.add_argument(
        "--organ",
        action="append",
        help="Organ to describe; repeat or comma-separate. With --new: the new target's "
        'name in words (e.g. "thyroid gland" -> thyroid_gland).',
    )
    gen.add_argument(
        "--all", action="store_true", dest="all_organs", help="Every organ of --modality."
    )
    gen.add_argument(
        "--modality",
        required=True,
        action="append",
        type=comma_list,
        metavar="MODALITY",
        help="Image modality: ct, mr, xray or us (with --new, repeat or comma-separate to "
        "describe the new target in several).",
    )
    gen.add_argument(
        "--force",
        action="store_true",
        help="Replace existing entries of this modality (hand-written ones included); with "
        "--new, redefine an existing target (a built-in one is overridden by a user file).",
    )
    new = gen.add_argument_group(
        "a new target (--new; each value given replaces the model's answer)"
    )
    new.add_argument(
        "--new", action="store_true", help="Define --organ as a new target of the prompt set."
    )
    new.add_argument(
        "--pair",
        action="store_true",
        help="A both-sides target with left and right members: three targets, e.g. "
        "psoas_muscles, psoas_muscle_left, psoas_muscle_right.",
    )
    new.add_argument("--modalities", metavar="LIST", help="Modalities that image it: ct,mr,...")
    new.add_argument(
        "--regions", metavar="LIST", help="Body regions showing it: head,thorax,abdomen,..."
    )
    new.add_argument(
        "--laterality", choices=("none", "left", "right"), help="The patient's side it is on."
    )
    new.add_argument("--window", metavar="W,L|PRESET", help="CT window: WIDTH,LEVEL or a preset.")
    new.add_argument("--synonyms", metavar="LIST", help="Other names, comma-separated.")
    new.add_argument("--top-k", type=int, metavar="N", help="Crops kept per slice.")
    add_dataclass_flags(gen.add_argument_group("language model"), GenerationConfig)
    gen.set_defaults(func=run_generate)
    pls = psub.add_parser(
        "list", parents=[common, pdir], help="What is cached, per organ and modality."
    )
    pls.set_defaults(func=run_list)
    show = psub.add_parser(
        "show", parents=[common, pdir], help="Print an organ's descriptions and provenance."
    )
    show.add_argument("organ", help="Organ name (or 'background').")
    show.add_argument("--modality", choices=("ct", "mr", "xray", "us"), help="Only this one.")
    show.set_defaults(func=run_show)


def run_generate(args: argparse.Namespace) -> int:
    """Run ``salip prompts generate``; the exit code."""
    names = {f.name for f in dataclasses.fields(GenerationConfig)}
    config = GenerationConfig(**{k: v for k, v in vars(args).items() if k in names})
    modalities = list(dict.fromkeys(m for group in args.modality for m in group))
    overrides = {k: getattr(args, k) for k in OVERRIDE_FIELDS if getattr(args, k) is not None}
    if args.new:
        if args.all_organs or not args.organ or len(args.organ) != 1:
            raise ConfigError('--new defines one target: give one --organ "NAME", not --all.')
        written = create_target(
            args.organ[0],
            modalities,
            pair=args.pair,
            overrides=overrides,
            config=config,
            prompts_folder=args.prompts_dir,
            force=args.force,
        )
    else:
        if overrides or args.pair:
            flag = "--pair" if args.pair else "--" + next(iter(overrides)).replace("_", "-")
            raise ConfigError(f"{flag} defines a new target: add --new, or drop it.")
        if len(modalities) != 1:
            raise ConfigError("give one --modality without --new (run once per modality).")
        targets = resolve_targets(args.organ, args.all_organs, modalities[0], args.prompts_dir)
        written = generate_prompts(
            targets,
            modalities[0],
            config=config,
            prompts_folder=args.prompts_dir,
            force=args.force,
        )
    for path in written:
        logger.info("wrote %s", path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Run ``salip prompts list``; the exit code."""
    out = sys.stdout
    out.write(f"prompts: {prompts_dir(args.prompts_dir)}\n")
    for row in list_entries(args.prompts_dir):
        if "error" in row:
            out.write(f"{row['organ']:30s} INVALID: {row['error']}\n")
            continue
        out.write(
            f"{row['organ']:30s} {row['modality']:5s} {row['count']:3d}  {row['source']:12s} "
            f"{row['origin']}  {row['date']}\n"
        )
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Run ``salip prompts show``; the exit code."""
    folder = args.prompts_dir
    name = args.organ if args.organ == BACKGROUND else _shown_target(args.organ, folder)
    data = load_prompt_file(name, folder)
    path = prompt_path(name, folder)
    entries = data["entries"]
    if args.modality and args.modality not in entries:
        raise ConfigError(
            f"{name} has no {args.modality} descriptions in {path}; it has: {', '.join(entries)}."
        )
    out = sys.stdout
    out.write(f"{name}  ({path})\n")
    for modality, entry in entries.items():
        if args.modality and modality != args.modality:
            continue
        origin = {k: v for k, v in entry.items() if k != "descriptions" and v is not None}
        out.write(f"\n[{modality}] " + ", ".join(f"{k}: {v}" for k, v in origin.items()) + "\n")
        for text in entry["descriptions"]:
            out.write(f"  - {text}\n")
    return 0


def _shown_target(text: str, folder: str | None) -> str:
    """The target ``text`` names in the prompt set ``folder``. When another file of the set
    is invalid (``salip prompts list`` marks it), the name is resolved without the set's
    vocabulary: a file of that name, else a built-in target; with a warning."""
    try:
        return get_organ(text, folder).name
    except ConfigError as exc:
        key = name_key(text)
        name = key if prompt_path(key, folder).is_file() else get_organ(text).name
        logger.warning("%s; showing %s without the rest of the set", str(exc).rstrip("."), name)
        return name
