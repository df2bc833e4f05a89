"""Writing organ descriptions and new targets with a language model, offline, into the
prompt cache.

One chat-completion request per organ asks any OpenAI-compatible endpoint for a JSON object
``{"descriptions": [...]}``: N short visual descriptions of how the organ looks in one
modality. Replies are validated, and nothing is written until every organ of the run has a
valid reply, so a failed run leaves the cache byte-for-byte unchanged. Each written entry
records the model, the template version and hash, the date and the sampling settings.

:func:`create_target` (``salip prompts generate --new``) first asks for a new target's
*definition* (``{"synonyms", "modalities", "regions", "laterality", "window"}``, plus
``"parts"`` for a pair), checks it with :func:`salip.core.targets.organ_from_definition`,
lets command-line values override the model's, then asks for its descriptions and writes
one prompt file per target into a user prompt set. Keys a reply has beyond the ones asked
are ignored, so one endpoint can answer both kinds of request.

A pair (``--pair``) is three targets: the both-sides one, named from the words given
("psoas muscles" -> ``psoas_muscles``), and its members ``<base>_left`` and
``<base>_right``, where ``<base>`` is that name less a final "s" (``psoas_muscle_left``);
a final "ss", "us", "is" or "as" is kept, since such names are singular already
("humerus" -> ``humerus_left``).

The API key is read from ``$OPENAI_API_KEY`` and only handed to the ``openai`` client; it is
never written to a file or logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai

from salip.core.errors import ConfigError, GenerationError, one_line
from salip.core.organs import MODALITIES, Organ, Vocabulary, vocabulary
from salip.core.prompts import (
    FORMAT_VERSION,
    MAX_DESCRIPTION_CHARS,
    description_problems,
    packaged_dir,
    prompts_dir,
    read_prompt_file,
    user_dir,
)
from salip.io.writing import atomic_write, write_problem

__all__ = [
    "SYSTEM_TEMPLATE",
    "TEMPLATE_VERSION",
    "USER_TEMPLATE",
    "ask_descriptions",
    "build_messages",
    "call_model",
    "check_modalities",
    "check_writable",
    "description_entry",
    "endpoint_url",
    "entry_provenance",
    "existing_files",
    "generate_prompts",
    "GenerationConfig",
    "known_targets",
    "make_client",
    "parse_reply",
    "refuse_conflicts",
    "reply_object",
    "reply_text",
    "resolve_targets",
    "served_model",
    "template_sha256",
    "write_file",
]

logger = logging.getLogger(__name__)

#: Bump when either template changes; the hash below changes with the text anyway.
TEMPLATE_VERSION = "1"

SYSTEM_TEMPLATE = """\
You are a radiologist who writes short visual descriptions of anatomy for an image-text \
model. The model compares each description with a small image crop, so every description \
must say what the structure looks like in the image: its shape, size, texture, intensity \
or signal, borders, and position relative to neighbouring structures. Never write \
instructions, steps, diagnoses or advice. Answer with a JSON object only."""

USER_TEMPLATE = """\
Write {n} different one-sentence visual descriptions of the {organ} as it appears on \
{modality_text}.
- Each description is at most {max_words} words and describes appearance only: shape, \
texture, {intensity_word}, margins, and position relative to neighbouring organs.
- At least one description says what a tight crop around the {organ} alone looks like.
- Left and right mean the patient's left and right.
Answer with exactly this JSON shape and nothing else:
{{"descriptions": ["...", "..."]}}"""

_MODALITY_TEXT = {
    "ct": ("axial computed tomography (CT) images", "attenuation and enhancement"),
    "mr": ("axial magnetic resonance (MR) images", "T1 and T2 signal intensity"),
    "xray": ("plain radiographs (X-ray)", "radiographic density"),
    "us": ("ultrasound images", "echogenicity"),
}


def template_sha256() -> str:
    """SHA-256 of both templates: the identity of the request wording."""
    text = json.dumps({"system": SYSTEM_TEMPLATE, "user": USER_TEMPLATE})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: Bump when a definition template changes; the hash below changes with the text anyway.
@dataclass(frozen=True)
class GenerationConfig:
    """Settings of ``salip prompts generate`` (one CLI flag per field)."""

    model: str = field(
        default="gpt-4o-mini",
        metadata={"help": "Chat model name at the endpoint."},
    )
    n: int = field(default=8, metadata={"help": "Descriptions per organ and modality."})
    base_url: str | None = field(
        default=None,
        metadata={
            "help": "OpenAI-compatible API base URL (e.g. http://localhost:8000/v1). "
            "Default: $OPENAI_BASE_URL, else OpenAI's."
        },
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature."})
    seed: int | None = field(
        default=None, metadata={"help": "Sampling seed, for endpoints that support one."}
    )
    max_retries: int = field(
        default=4,
        metadata={"help": "Retries of transient failures (429, 5xx, timeouts), with backoff."},
    )
    timeout: float = field(default=60.0, metadata={"help": "Seconds to wait for one reply."})

    def validate(self) -> None:
        """Raise ConfigError for out-of-range values."""
        if not 1 <= self.n <= 32:
            raise ConfigError("n must be between 1 and 32.")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError("temperature must be between 0 and 2.")
        if self.max_retries < 0 or self.timeout <= 0:
            raise ConfigError("max_retries must be >= 0 and timeout > 0.")


def build_messages(organ: Organ, modality: str, n: int) -> list[dict[str, str]]:
    """The chat messages for one organ and modality."""
    modality_text, intensity_word = _MODALITY_TEXT[modality]
    user = USER_TEMPLATE.format(
        n=n,
        organ=organ.name.replace("_", " "),
        modality_text=modality_text,
        intensity_word=intensity_word,
        max_words=40,
    )
    return [{"role": "system", "content": SYSTEM_TEMPLATE}, {"role": "user", "content": user}]


def parse_reply(text: str | None, n: int, max_chars: int = MAX_DESCRIPTION_CHARS) -> list[str]:
    """The descriptions in a model reply; GenerationError if it is not what was asked.

    Accepts the JSON object alone or inside a Markdown code fence. Keeps the first ``n`` of
    a longer list; refuses fewer than ``n``, empty, duplicate or over-long strings.
    """
    shape = '{"descriptions": [string, ...]}'
    data, body = reply_object(text, shape)
    if not isinstance(data.get("descriptions"), list):
        raise GenerationError(f"the model's reply is not a JSON object {shape}: {body[:80]!r}")
    descriptions = data["descriptions"]
    problems = description_problems(descriptions, max_chars)
    if problems:
        raise GenerationError("the model's descriptions are unusable: " + "; ".join(problems))
    if len(descriptions) < n:
        raise GenerationError(f"the model gave {len(descriptions)} descriptions, not {n}.")
    return [" ".join(d.split()) for d in descriptions[:n]]


def reply_object(text: str | None, shape: str) -> tuple[dict[str, Any], str]:
    """(the JSON object of a reply, alone or in a Markdown code fence; the text parsed).

    Raises:
        GenerationError: an empty reply, or one that is not a JSON object (``shape`` says
            what was asked for).
    """
    if not text or not text.strip():
        raise GenerationError("the model's reply is empty.")
    body = text.strip()
    fence = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.DOTALL)
    if fence:
        body = fence.group(1)
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise GenerationError(f"the model's reply is not JSON ({exc}): {body[:80]!r}") from exc
    if not isinstance(data, dict):
        raise GenerationError(f"the model's reply is not a JSON object {shape}: {body[:80]!r}")
    return data, body


def _base_url(config: GenerationConfig) -> str | None:
    """The endpoint URL from --base-url or $OPENAI_BASE_URL (None: OpenAI's); checked.

    Raises:
        GenerationError: the URL is not http(s)://HOST[:PORT]/... (one line).
    """
    url = config.base_url or os.environ.get("OPENAI_BASE_URL") or None
    if url is None:
        return None
    source = "--base-url" if config.base_url else "$OPENAI_BASE_URL"
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise GenerationError(
            f"{source} {url!r} is not an http(s) URL; give one like http://localhost:8000/v1."
        )
    return url


def make_client(config: GenerationConfig) -> Any:
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise GenerationError(
            "OPENAI_API_KEY is not set: export it before running `salip prompts generate` "
            "(a local server that ignores keys accepts any value, e.g. OPENAI_API_KEY=local)."
        )
    return openai.OpenAI(
        api_key=key,
        base_url=_base_url(config),
        max_retries=config.max_retries,
        timeout=config.timeout,
    )


def endpoint_url(client: Any) -> str:
    """The API base URL without credentials or query, for the provenance record."""
    parts = urlsplit(str(client.base_url))
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"


#: What to check when the endpoint answers with something that is not a chat completion.
_CHECK_ENDPOINT = (
    "check that --base-url (or $OPENAI_BASE_URL) is an OpenAI-compatible API ending in /v1 "
    "and that --model names a chat model it serves"
)


def _attempts(config: GenerationConfig, retried: bool = True) -> str:
    """The "after N attempt(s)" of a message, for failures the client retries."""
    return f" after {config.max_retries + 1} attempt(s)" if retried else ""


def _status_hint(status: int) -> str:
    """What to do about an HTTP error status from the endpoint."""
    if status in (401, 403):
        return "check OPENAI_API_KEY (is it the key for this endpoint?)"
    if status == 404:
        return "check --model and --base-url (or $OPENAI_BASE_URL)"
    if status in (400, 405, 415, 422):
        return _CHECK_ENDPOINT
    return "try later, or raise --max-retries"


def _status_error(exc: Any, where: str, config: GenerationConfig) -> GenerationError:
    """One-line GenerationError for an HTTP error status (``openai.APIStatusError``)."""
    status = exc.status_code
    retried = status in (408, 409, 429) or status >= 500  # what the openai client retries
    body = exc.body if isinstance(exc.body, str) else ""
    if body.lstrip()[:1] == "<":  # an HTML error page, from a proxy or a web server
        said = "an HTML error page, not the API's JSON"
    else:
        said = one_line(exc.message)
    return GenerationError(
        f"{where} answered HTTP {status}{_attempts(config, retried)} ({said}); "
        f"{_status_hint(status)}."
    )


def call_model(
    client: Any, who: str, messages: list[dict[str, str]], config: GenerationConfig
) -> Any:
    """The endpoint's reply to one chat request about the target ``who``; GenerationError
    (one line) on failure."""
    where = f"{who}: {endpoint_url(client)}"
    extra: dict[str, Any] = {} if config.seed is None else {"seed": config.seed}
    try:
        return client.chat.completions.create(
            model=config.model,
            messages=messages,
            temperature=config.temperature,
            response_format={"type": "json_object"},
            **extra,
        )
    except openai.APITimeoutError as exc:
        raise GenerationError(
            f"{who}: no reply from {endpoint_url(client)} within {config.timeout:g} s"
            f"{_attempts(config)}; try later or raise --timeout."
        ) from exc
    except openai.APIConnectionError as exc:
        raise GenerationError(
            f"{who}: cannot reach {endpoint_url(client)}{_attempts(config)} "
            f"({one_line(exc, 100)}); check --base-url (or $OPENAI_BASE_URL) and that the "
            "server is running."
        ) from exc
    except openai.APIStatusError as exc:
        raise _status_error(exc, where, config) from exc
    except (openai.APIError, ValueError) as exc:  # a body that is not JSON, or not the schema
        detail = "not JSON" if isinstance(exc, json.JSONDecodeError) else one_line(exc, 100)
        raise GenerationError(
            f"{where} answered with a body that is not a chat completion ({detail}); "
            f"{_CHECK_ENDPOINT}."
        ) from exc


def reply_text(response: Any, where: str) -> str:
    """The message text of a chat-completion reply; GenerationError if it has none."""
    choices = getattr(response, "choices", None)
    if isinstance(response, str) or not isinstance(choices, list):
        kind = "text" if isinstance(response, str) else "JSON without 'choices'"
        raise GenerationError(
            f"{where} answered with {kind}, not a chat completion; {_CHECK_ENDPOINT}."
        )
    if not choices:
        raise GenerationError(
            f"{where} answered with no choices; try again, or try another --model."
        )
    message = getattr(choices[0], "message", None)
    content = getattr(message, "content", None)
    if isinstance(content, str):
        return content
    refusal = getattr(message, "refusal", None)
    if isinstance(refusal, str) and refusal.strip():
        raise GenerationError(
            f"{where}: the model refused ({one_line(refusal, 100)}); try another --model."
        )
    raise GenerationError(
        f"{where}: the model's reply has no text (content is {content!r}); try again, or "
        "try another --model."
    )


def served_model(response: Any, config: GenerationConfig) -> str:
    """The name of the model that answered (the one asked for when the reply has none)."""
    served = getattr(response, "model", None)
    return served if isinstance(served, str) else config.model


def _request(client: Any, organ: Organ, modality: str, config: GenerationConfig) -> tuple:
    """(descriptions, served model name) for one organ; GenerationError on failure."""
    messages = build_messages(organ, modality, config.n)
    response = call_model(client, organ.name, messages, config)
    text = reply_text(response, f"{organ.name}: {endpoint_url(client)}")
    try:
        descriptions = parse_reply(text, config.n)
    except GenerationError as exc:
        raise GenerationError(f"{organ.name}: {exc}") from exc
    return descriptions, served_model(response, config)


def check_writable(folder: Path) -> None:
    """ConfigError unless ``folder`` (or, if missing, its nearest existing parent) is
    writable: found before any request, not after the replies have been paid for."""
    if write_problem(folder) is not None:
        raise ConfigError(
            f"cannot write prompts to {folder}; pass --prompts-dir DIR to write elsewhere."
        )


def known_targets(folder: str | Path | None = None) -> Vocabulary:
    """The targets of the prompt set a run writes (``folder``, see :func:`prompts_dir`):
    the packaged ones alone while its folder does not exist yet."""
    user = user_dir(folder)
    if user is not None and not user.is_dir():
        user = None
    return vocabulary(packaged_dir() if user is None else user)


def check_modalities(modalities: str | Sequence[str]) -> list[str]:
    """The modalities asked for, repeats dropped; ConfigError for an unknown one."""
    items = [modalities] if isinstance(modalities, str) else list(modalities)
    for modality in items:
        if modality not in MODALITIES:
            raise ConfigError(f"unknown modality '{modality}'; use one of {', '.join(MODALITIES)}.")
    if not items:
        raise ConfigError(f"name a modality with --modality ({', '.join(MODALITIES)}).")
    return list(dict.fromkeys(items))


def resolve_targets(
    organs: Sequence[str] | None,
    all_organs: bool,
    modality: str,
    folder: str | Path | None = None,
) -> list[Organ]:
    """The organs of a generate run: named ones (repeated and/or comma-separated), or with
    ``all_organs`` every organ of ``modality``, in the prompt set ``folder`` (its own
    targets included). Raises ConfigError/OrganError with the fix."""
    check_modalities(modality)
    if all_organs and organs:
        raise ConfigError("give --organ or --all, not both.")
    known = known_targets(folder)
    if all_organs:
        return [o for o in known.organs.values() if modality in o.modalities]
    names = [part for value in organs or () for part in value.split(",") if part.strip()]
    if not names:
        raise ConfigError("name organs with --organ (repeatable) or use --all.")
    targets = list(dict.fromkeys(known.get(name) for name in names))
    for organ in targets:
        if modality not in organ.modalities:
            raise ConfigError(
                f"{organ.name} is not imaged by {modality} in salip's vocabulary (its "
                f"modalities: {', '.join(organ.modalities)})."
            )
    return targets


def existing_files(
    folder: Path, names: Sequence[str], modalities: Sequence[str]
) -> tuple[dict[str, dict[str, Any]], list[tuple[str, str, str]]]:
    """(the parsed prompt files ``folder`` has for ``names``; (name, modality, source) of
    their entries for ``modalities``). ConfigError for an unreadable file."""
    existing: dict[str, dict[str, Any]] = {}
    conflicts = []
    for name in names:
        path = folder / f"{name}.json"
        if path.exists():
            existing[name] = read_prompt_file(path)
            for modality in modalities:
                entry = existing[name]["entries"].get(modality)
                if entry is not None:
                    conflicts.append((name, modality, entry["source"]))
    return existing, conflicts


def refuse_conflicts(folder: Path, conflicts: list[tuple[str, str, str]], force: bool) -> None:
    """ConfigError naming the entries a run would replace, unless ``force``."""
    if not conflicts or force:
        return
    by_modality: dict[str, list[str]] = {}
    for name, modality, source in conflicts:
        by_modality.setdefault(modality, []).append(f"{name} ({source})")
    listed = "; ".join(f"{m} descriptions for {', '.join(v)}" for m, v in by_modality.items())
    raise ConfigError(
        f"{folder} already has {listed}; pass --force to replace them, or --prompts-dir DIR "
        "to write a separate prompt set."
    )


def ask_descriptions(
    client: Any, organs: Sequence[Organ], modalities: Sequence[str], config: GenerationConfig
) -> dict[tuple[str, str], tuple[list[str], str]]:
    """(organ name, modality) -> (descriptions, served model name), every one asked for."""
    results = {}
    for organ in organs:
        for modality in modalities:
            logger.info(
                "asking %s for %d %s descriptions of %s",
                config.model,
                config.n,
                modality,
                organ.name,
            )
            results[organ.name, modality] = _request(client, organ, modality, config)
    return results


def entry_provenance(
    config: GenerationConfig,
    endpoint: str,
    served: str,
    template: tuple[str, str],
    sampling: dict[str, Any],
) -> dict[str, Any]:
    """The provenance of a generated entry or definition (``template``: version, hash)."""
    return {
        "source": "generated",
        "date": dt.datetime.now(dt.timezone.utc).date().isoformat(),
        "generator": config.model,
        "served_model": served,
        "endpoint": endpoint,
        "template_version": template[0],
        "template_sha256": template[1],
        "sampling": sampling,
    }


def description_entry(
    descriptions: list[str], served: str, config: GenerationConfig, endpoint: str
) -> dict[str, Any]:
    """A generated ``entries`` item of a prompt file, with its provenance."""
    sampling = {"temperature": config.temperature, "seed": config.seed, "n": config.n}
    template = (TEMPLATE_VERSION, template_sha256())
    return {
        "descriptions": descriptions,
        **entry_provenance(config, endpoint, served, template, sampling),
    }


def write_file(path: Path, data: dict[str, Any]) -> None:
    """Write one prompt file atomically; ConfigError (one line) on failure."""
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    try:
        atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot write {path} ({exc}); pass --prompts-dir DIR to write elsewhere."
        ) from exc


def generate_prompts(
    organs: Sequence[Organ],
    modality: str,
    *,
    config: GenerationConfig | None = None,
    prompts_folder: str | Path | None = None,
    force: bool = False,
    client: Any = None,
) -> list[Path]:
    """Generate descriptions of ``organs`` in ``modality`` and write them to the cache.

    Args:
        organs: target organs (see :func:`resolve_targets`).
        modality: "ct", "mr", "xray" or "us".
        config: model, sampling and retry settings.
        prompts_folder: prompt folder to write (created if missing); default
            :func:`salip.core.prompts.prompts_dir`.
        force: replace existing entries of ``modality`` (hand-written ones included, with
            a warning naming them).
        client: an ``openai.OpenAI`` client to use instead of one built from the environment.

    Returns:
        The prompt files written, in organ order.

    Raises:
        GenerationError: no API key, endpoint failure after retries, or an invalid reply.
        ConfigError: an existing entry without ``force``, or an unreadable cache file.
    """
    config = config or GenerationConfig()
    config.validate()
    folder = prompts_dir(prompts_folder)
    # Check the cache before any request: refusals cost nothing.
    existing, conflicts = existing_files(folder, [o.name for o in organs], [modality])
    refuse_conflicts(folder, conflicts, force)
    check_writable(folder)
    client = client if client is not None else make_client(config)
    endpoint = endpoint_url(client)
    results = ask_descriptions(client, organs, [modality], config)
    written = []
    for organ in organs:
        data = existing.get(
            organ.name, {"format_version": FORMAT_VERSION, "organ": organ.name, "entries": {}}
        )
        data["entries"][modality] = description_entry(
            *results[organ.name, modality], config, endpoint
        )
        path = folder / f"{organ.name}.json"
        write_file(path, data)
        written.append(path)
        if (organ.name, modality, "hand-written") in conflicts:
            logger.warning("replaced the hand-written %s descriptions of %s", modality, organ.name)
    return written
