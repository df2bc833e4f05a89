"""New targets (``salip prompts generate --new``): a language model defines a structure
(synonyms, modalities, regions, laterality, window; parts for a pair), salip checks the
answer against the allowed values (:func:`salip.core.targets.organ_from_definition`),
command-line values override it, and the target's prompt file is written with its
descriptions and provenance. The model client, retries and description requests are
:mod:`salip.apps.prompt_generation`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salip.apps.prompt_generation import (
    GenerationConfig,
    ask_descriptions,
    call_model,
    check_modalities,
    check_writable,
    description_entry,
    endpoint_url,
    entry_provenance,
    existing_files,
    known_targets,
    make_client,
    refuse_conflicts,
    reply_object,
    reply_text,
    served_model,
    write_file,
)
from salip.core.errors import ConfigError, GenerationError, OrganError
from salip.core.organs import MODALITIES, Organ, Vocabulary, names_only_a_side
from salip.core.prompts import (
    BACKGROUND,
    FORMAT_VERSION,
    packaged_dir,
    read_prompt_file,
    user_dir,
    validate_prompt_data,
)
from salip.core.targets import (
    REGIONS,
    definition_fields,
    organ_from_definition,
    target_name,
)
from salip.core.windows import WINDOWS

__all__ = [
    "DEFINITION_PIECES",
    "DEFINITION_REPLY_KEYS",
    "DEFINITION_SYSTEM_TEMPLATE",
    "DEFINITION_TEMPLATE_VERSION",
    "DEFINITION_USER_TEMPLATE",
    "OVERRIDE_FIELDS",
    "build_definition_messages",
    "create_target",
    "definition_template_sha256",
    "foreign_synonyms",
    "NewTargets",
    "pair_member_names",
    "parse_definition_reply",
    "plan_new_target",
]

logger = logging.getLogger(__name__)

DEFINITION_TEMPLATE_VERSION = "1"

DEFINITION_SYSTEM_TEMPLATE = """\
You are a radiologist who defines anatomical structures for a medical image segmentation \
tool: the modalities that image each structure, the body regions whose slices show it, \
the patient's side it lies on, and the CT window that displays it best. Use only the \
values offered. Answer with a JSON object only."""

DEFINITION_USER_TEMPLATE = """\
Define the {structure} as a segmentation target{pair_clause}.
- synonyms: up to 5 other names radiologists use for it, in English.
- modalities: the modalities that routinely show it, any of: {modalities}.
- regions: the body regions whose axial slices show it, any of: {regions}.
- laterality: "left" or "right" if the patient has it on that side only, else "none".
- window: the CT window that shows it best: one of {windows}, or "WIDTH,LEVEL" in \
Hounsfield units (e.g. "350,40").
{parts_rule}Answer with exactly this JSON shape and nothing else:
{shape}"""

#: The pieces of DEFINITION_USER_TEMPLATE for a single target and for a pair.
DEFINITION_PIECES = {
    "single": {
        "pair_clause": "",
        "parts_rule": "",
        "shape": '{"synonyms": ["..."], "modalities": ["..."], "regions": ["..."], '
        '"laterality": "...", "window": "..."}',
    },
    "pair": {
        "pair_clause": ": a structure the patient has on both sides, segmented as one target "
        "made of a left and a right member",
        "parts_rule": "- parts: its two one-sided members, the patient's left one first; "
        'laterality is "none" for the pair itself.\n',
        "shape": '{"synonyms": ["..."], "modalities": ["..."], "regions": ["..."], '
        '"laterality": "none", "window": "...", "parts": ["left ...", "right ..."]}',
    },
}

#: Definition keys read from a reply; any other key is ignored.
DEFINITION_REPLY_KEYS = ("synonyms", "modalities", "regions", "laterality", "window")
#: Definition fields the command line can set (``--regions`` ...), overriding the model.
OVERRIDE_FIELDS = ("synonyms", "modalities", "regions", "laterality", "window", "top_k")


def definition_template_sha256() -> str:
    """SHA-256 of the definition templates, all pieces included."""
    text = json.dumps(
        {
            "system": DEFINITION_SYSTEM_TEMPLATE,
            "user": DEFINITION_USER_TEMPLATE,
            "pieces": DEFINITION_PIECES,
        }
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_definition_messages(structure: str, pair: bool) -> list[dict[str, str]]:
    """The chat messages asking for the definition of ``structure`` (words, e.g. "thyroid
    gland"), a both-sides pair if ``pair``."""
    user = DEFINITION_USER_TEMPLATE.format(
        structure=" ".join(structure.split()),
        modalities=", ".join(MODALITIES),
        regions=", ".join(REGIONS),
        windows=", ".join(WINDOWS),
        **DEFINITION_PIECES["pair" if pair else "single"],
    )
    return [
        {"role": "system", "content": DEFINITION_SYSTEM_TEMPLATE},
        {"role": "user", "content": user},
    ]


def parse_definition_reply(text: str | None, pair: bool) -> dict[str, Any]:
    """The definition fields of a model reply: the keys asked for that it has (other keys
    are ignored). Their values are checked later, with the command line's overrides
    applied (:func:`organ_from_definition`).

    Raises:
        GenerationError: the reply is empty or not a JSON object.
    """
    shape = DEFINITION_PIECES["pair" if pair else "single"]["shape"]
    data, _ = reply_object(text, shape)
    keys = (*DEFINITION_REPLY_KEYS, "parts") if pair else DEFINITION_REPLY_KEYS
    return {k: data[k] for k in keys if k in data}


def _request_definition(
    client: Any, name: str, words: str, pair: bool, config: GenerationConfig
) -> tuple[dict[str, Any], str]:
    """(the definition fields the model gave, served model name) for the new target
    ``name`` called ``words``; GenerationError on failure."""
    messages = build_definition_messages(words, pair)
    response = call_model(client, name, messages, config)
    text = reply_text(response, f"{name}: {endpoint_url(client)}")
    try:
        fields = parse_definition_reply(text, pair)
    except GenerationError as exc:
        raise GenerationError(f"{name}: {exc}") from exc
    return fields, served_model(response, config)


# --- new targets (`salip prompts generate --new`) ------------------------------------------

#: Endings of names that are singular already: a pair's members keep them.
_SINGULAR_ENDINGS = ("ss", "us", "is", "as")
#: ``where`` of the command line's values in definition messages.
_COMMAND_LINE = "the command line"


@dataclass(frozen=True)
class NewTargets:
    """The targets one ``--new`` run writes.

    Attributes:
        words: the target's name as the user wrote it, spaces collapsed.
        name: its snake_case name (:func:`salip.core.targets.target_name`).
        members: for a pair, the names of its left and right members; else empty.
    """

    words: str
    name: str
    members: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Every target written, in writing order: a pair's members before the pair, so
        a file never names a member that is not there yet."""
        return (*self.members, self.name)


def pair_member_names(name: str) -> tuple[str, str]:
    """The left and right members of the pair ``name``: ``<base>_left``, ``<base>_right``
    with ``<base>`` the name less a final "s" unless it ends in "ss", "us", "is" or "as"
    ("psoas_muscles" -> "psoas_muscle_left", "humerus" -> "humerus_left")."""
    base = name if name.endswith(_SINGULAR_ENDINGS) else name.removesuffix("s")
    return f"{base}_left", f"{base}_right"


def plan_new_target(words: str, pair: bool = False) -> NewTargets:
    """The targets ``--new`` (with ``--pair`` if ``pair``) creates for ``words``.

    Raises:
        OrganError: ``words`` cannot name a target.
    """
    name = target_name(words)
    if name == BACKGROUND:
        raise OrganError(
            f"'{words}' is reserved: {BACKGROUND} holds what every target is told apart from, "
            f"not a target; edit its descriptions with `salip prompts generate --organ "
            f"{BACKGROUND}`, or name the new target otherwise."
        )
    if names_only_a_side(name):
        raise OrganError(
            f"'{words}' names only a side; name the structure (e.g. \"kidney (left)\")."
        )
    members = pair_member_names(name) if pair else ()
    for member in members:
        target_name(member)  # a pair's members must be valid names too (length)
    return NewTargets(" ".join(words.split()), name, members)


def _user_folder(prompts_folder: str | Path | None) -> Path:
    """The user prompt set new targets go into; ConfigError for the packaged one."""
    folder = user_dir(prompts_folder)
    if folder is None:
        raise ConfigError(
            "new targets go into a user prompt set, not the packaged one; pass "
            "--prompts-dir DIR or set SALIP_PROMPTS_DIR."
        )
    return folder


def _origin(known: Vocabulary, name: str) -> str:
    source = known.sources[name]
    return "built-in" if source == "built-in" else f"user target, {source}"


def _refuse_known(plan: NewTargets, known: Vocabulary, folder: Path, force: bool) -> None:
    """OrganError when the new target's words name another target, or when a target it
    writes exists already and ``force`` is not given."""
    other = known.resolve(plan.words)
    if other is not None and other not in plan.names:
        raise OrganError(
            f"'{plan.words}' already names the target {other} ({_origin(known, other)}); "
            f"redefine it with --organ {other} --new --force, or choose another name."
        )
    taken = [name for name in plan.names if name in known.organs]
    if taken and not force:
        listed = ", ".join(f"{name} ({_origin(known, name)})" for name in taken)
        built_in = any(known.sources[name] == "built-in" for name in taken)
        note = " (a user file there overrides the built-in one)" if built_in else ""
        raise OrganError(
            f"{listed}: already a target; pass --force to redefine it in {folder}{note}, or "
            "choose another name."
        )


def _prepare_files(
    plan: NewTargets, folder: Path, modalities: Sequence[str], force: bool
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(the prompt files the new targets' files start from, whose other modalities'
    entries are kept: the user set's, else for a redefined built-in target the packaged
    one; the built-in targets redefined).

    Raises:
        OrganError, ConfigError: an existing target or entry without ``force``, or an
            invalid prompt set; before any request.
    """
    known = known_targets(folder)
    _refuse_known(plan, known, folder, force)
    existing, conflicts = existing_files(folder, plan.names, modalities)
    refuse_conflicts(folder, conflicts, force)
    built_in = [name for name in plan.names if known.sources.get(name) == "built-in"]
    for name in built_in:
        if name not in existing:
            existing[name] = read_prompt_file(packaged_dir() / f"{name}.json")
    return existing, built_in


def _field(message: str, where: str) -> tuple[str, str]:
    """(the field, the rest) of an :func:`organ_from_definition` message about ``where``
    ("W: definition.regions: ..." -> "regions", ": ...")."""
    body = message.removeprefix(f"{where}: definition.")
    field = re.match(r"[a-z_]*", body)
    name = field.group(0) if field else ""
    return name, body[len(name) :]


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _checked_overrides(
    overrides: dict[str, Any], modalities: Sequence[str], pair: bool
) -> dict[str, Any]:
    """The definition fields the command line sets (None values dropped), checked before
    any request.

    Raises:
        ConfigError: an unknown field, a value that is not allowed (flag named), a pair
            given a side, or --modalities without a --modality asked for.
    """
    values = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(values) - set(OVERRIDE_FIELDS))
    if unknown:
        raise ConfigError(
            f"{unknown[0]} cannot be set for a new target; set {', '.join(OVERRIDE_FIELDS)}."
        )
    if pair and str(values.get("laterality", "none")).strip().lower() != "none":
        raise ConfigError(
            "--laterality: a pair (--pair) has no side of its own (its members are left "
            "and right); drop --laterality."
        )
    trial = {"modalities": list(modalities), "regions": ["abdomen"], "laterality": "none"}
    try:
        organ = organ_from_definition(
            "new", {**trial, "window": "abdomen", **values}, _COMMAND_LINE
        )
    except OrganError as exc:
        field, rest = _field(str(exc), _COMMAND_LINE)
        raise ConfigError(_flag(field) + rest) from None
    missing = [m for m in modalities if m not in organ.modalities]
    if missing:
        raise ConfigError(
            f"--modality {missing[0]} is not among --modalities {','.join(organ.modalities)}; "
            "add it there."
        )
    return values


def _string_items(value: Any) -> list[str] | None:
    """``value`` as a list of strings (a comma-separated string split), or None when it is
    not one (left for :func:`organ_from_definition` to refuse)."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [" ".join(v.split()) for v in value if v.strip()]
    return None


def _with_modalities(value: Any, modalities: Sequence[str]) -> Any:
    """The model's modalities plus the ones descriptions are asked for (the user images
    the target in those)."""
    items = _string_items(value)
    if not items:
        return value
    return [*items, *(m for m in modalities if m not in {v.lower() for v in items})]


def _with_words(value: Any, plan: NewTargets) -> Any:
    """The synonyms, the target's own words first when they differ from its name, without
    repeats (case-insensitive) or the name itself."""
    items = [] if value is None else _string_items(value)
    if items is None:
        return value
    if plan.words != plan.name:
        items.insert(0, plan.words.lower())
    unique = {v.lower(): v for v in reversed(items) if v != plan.name}
    return list(reversed(unique.values()))


def _check_pair_answer(plan: NewTargets, answer: dict[str, Any]) -> None:
    """GenerationError unless the model's answer for a pair names two parts and no side."""
    parts = answer.get("parts")
    if not (isinstance(parts, list) and len(parts) == 2):
        raise GenerationError(
            f"{plan.name}: the model's answer gives no left and right parts (parts: "
            f"{json.dumps(parts)}), so it does not take {plan.words} for a pair; drop --pair "
            "to define a single target, or try again or another --model."
        )
    laterality = answer.get("laterality")
    if isinstance(laterality, str) and laterality.strip().lower() in ("left", "right"):
        raise GenerationError(
            f"{plan.name}: the model's answer gives the pair laterality {laterality!r}, but "
            "a both-sides pair has none (its members are left and right); drop --pair, or "
            "try again or another --model."
        )


def _model_organ(
    plan: NewTargets, answer: dict[str, Any], overrides: dict[str, Any], modalities: Sequence[str]
) -> Organ:
    """The new (single or pair) target: the model's answer, the command line's values over
    it, the requested modalities and the target's own words added, a pair's fixed parts.

    Raises:
        GenerationError: the answer is unusable (one line naming the field and its flag).
    """
    if plan.members:
        _check_pair_answer(plan, answer)
    data = {k: v for k, v in answer.items() if k != "parts"}
    data.update(overrides)
    if "modalities" not in overrides:
        data["modalities"] = _with_modalities(data.get("modalities"), modalities)
    data["synonyms"] = _with_words(data.get("synonyms"), plan)
    if plan.members:
        data.update(parts=list(plan.members), laterality="none")
    where = f"{plan.name}: the model's answer"
    try:
        return organ_from_definition(plan.name, data, where)
    except OrganError as exc:
        field, _ = _field(str(exc), where)
        fix = f"set it with {_flag(field)}, or " if field in OVERRIDE_FIELDS else ""
        raise GenerationError(
            f"{str(exc).rstrip('.')}; {fix}try again or another --model."
        ) from None


def _member_organ(pair: Organ, name: str, side: str) -> Organ:
    """The ``side`` member ``name`` of the new pair ``pair``: its modalities, regions and
    window, one crop per slice."""
    words = name.removesuffix(f"_{side}").replace("_", " ")
    data = {
        "synonyms": [f"{side} {words}"],
        "modalities": list(pair.modalities),
        "regions": list(pair.regions),
        "laterality": side,
        "top_k": 1,
        "window": pair.window,
    }
    return organ_from_definition(name, data, name)


def foreign_synonyms(synonyms: Any, plan: NewTargets, known: Vocabulary) -> list[str]:
    """The synonyms that already name another target (``liver`` for a new target)."""
    items = _string_items(synonyms) or []
    return [s for s in items if (known.resolve(s) or plan.name) not in plan.names]


def _new_organs(
    plan: NewTargets,
    answer: dict[str, Any],
    overrides: dict[str, Any],
    modalities: Sequence[str],
    known: Vocabulary,
) -> dict[str, Organ]:
    """Name -> target for every target the run writes (see :class:`NewTargets`). Synonyms
    of the model's answer that name another target are dropped, with a warning."""
    foreign = foreign_synonyms(answer.get("synonyms"), plan, known)
    if foreign:
        logger.warning(
            "%s: dropped the model's synonym(s) %s: they name other targets",
            plan.name, ", ".join(f"{s!r} ({known.resolve(s)})" for s in foreign),
        )  # fmt: skip
        kept = [s for s in _string_items(answer["synonyms"]) or [] if s not in foreign]
        answer = {**answer, "synonyms": kept}
    organ = _model_organ(plan, answer, overrides, modalities)
    organs = {
        name: _member_organ(organ, name, side)
        for name, side in zip(plan.members, ("left", "right"))
    }
    organs[organ.name] = organ
    return organs


def _target_file(
    organ: Organ,
    provenance: dict[str, Any],
    base: dict[str, Any] | None,
    entries: dict[str, Any],
) -> dict[str, Any]:
    """The prompt file of a new target: its definition, the entries of the file it
    replaces (``base``) with ``entries`` over them; checked like any prompt file."""
    data = {
        "format_version": FORMAT_VERSION,
        "organ": organ.name,
        "definition": {**definition_fields(organ), **provenance},
        "entries": {**(base or {}).get("entries", {}), **entries},
    }
    problems = validate_prompt_data(data, organ.name)
    if problems:
        raise GenerationError(
            f"{organ.name}: the new prompt file would be invalid ({problems[0]}); try again "
            "or another --model."
        )
    return data


def create_target(
    words: str,
    modalities: str | Sequence[str],
    *,
    pair: bool = False,
    overrides: dict[str, Any] | None = None,
    config: GenerationConfig | None = None,
    prompts_folder: str | Path | None = None,
    force: bool = False,
    client: Any = None,
) -> list[Path]:
    """Define a new target with a language model and write it, with its descriptions, to
    a user prompt set (``salip prompts generate --organ WORDS --new``).

    Args:
        words: the target's name in words ("thyroid gland" -> ``thyroid_gland.json``).
        modalities: the modalities to ask descriptions for (added to its definition).
        pair: a both-sides target, written with its left and right members (three files;
            see the module docstring for their names), each with its own descriptions.
        overrides: definition fields (:data:`OVERRIDE_FIELDS`) that replace the model's
            answer, as values or comma-separated strings; recorded as ``overrides``.
        config: model, sampling and retry settings.
        prompts_folder: the user prompt set (created if missing); default
            ``$SALIP_PROMPTS_DIR``. The packaged set is refused.
        force: redefine an existing target (a built-in one is overridden by a user file)
            and replace its descriptions of ``modalities``.
        client: an ``openai.OpenAI`` client to use instead of one built from the environment.

    Returns:
        The prompt files written (a pair's members first).

    Raises:
        ConfigError, OrganError: a refused name, folder or value, before any request.
        GenerationError: no API key, endpoint failure, or an unusable answer; nothing is
            written.
    """
    config = config or GenerationConfig()
    config.validate()
    modalities = check_modalities(modalities)
    folder = _user_folder(prompts_folder)
    plan = plan_new_target(words, pair)
    values = _checked_overrides(dict(overrides or {}), modalities, pair)
    base, built_in = _prepare_files(plan, folder, modalities, force)
    known = known_targets(folder)
    foreign = foreign_synonyms(values.get("synonyms"), plan, known)
    if foreign:
        raise ConfigError(
            f"--synonyms {', '.join(foreign)}: already name{'s' if len(foreign) == 1 else ''} "
            f"{', '.join(str(known.resolve(s)) for s in foreign)}; give words that name only "
            f"{plan.name}."
        )
    check_writable(folder)
    client = client if client is not None else make_client(config)
    endpoint = endpoint_url(client)
    logger.info("asking %s for the definition of %s", config.model, plan.name)
    answer, served = _request_definition(client, plan.name, plan.words, pair, config)
    organs = _new_organs(plan, answer, values, modalities, known)
    template = (DEFINITION_TEMPLATE_VERSION, definition_template_sha256())
    sampling = {"temperature": config.temperature, "seed": config.seed}
    provenance = entry_provenance(config, endpoint, served, template, sampling)
    provenance["overrides"] = [f for f in OVERRIDE_FIELDS if f in values]
    asked = [organs[plan.name], *(organs[m] for m in plan.members)]
    results = ask_descriptions(client, asked, modalities, config)
    files = {
        name: _target_file(
            organs[name],
            provenance,
            base.get(name),
            {m: description_entry(*results[name, m], config, endpoint) for m in modalities},
        )
        for name in plan.names
    }
    for name, data in files.items():
        write_file(folder / f"{name}.json", data)
    for name in built_in:
        logger.warning("%s: the user target in %s overrides the built-in one", name, folder)
    return [folder / f"{name}.json" for name in plan.names]
