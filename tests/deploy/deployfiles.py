"""Readers for the deployment files: docker-compose.yml (with Compose interpolation), .env.example,
deploy/Dockerfile stages, and the settings objects whose environment variables those files set."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "deploy" / "k8s"
HEALTHCHECK_SCRIPT = ROOT / "deploy" / "healthcheck.py"

_VAR = re.compile(r"\$(?:\$|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\})")


class InterpolationError(ValueError):
    """A ``${VAR:?message}`` whose variable is unset, as ``docker compose`` reports it."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose substitution: ``$$``, ``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?m}``, ``${V:+a}``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
        value = env.get(name)
        empty = value is None or value == ""
        if op == ":-":
            return arg if empty else str(value)
        if op == "-":
            return arg if value is None else value
        if op == ":?":
            if empty:
                raise InterpolationError(f"{name}: {arg}")
            return str(value)
        if op == ":+":
            return "" if empty else arg
        return "" if value is None else value

    return _VAR.sub(replace, text)


def variables(text: str) -> set[str]:
    """The ``${NAME}`` variables a text refers to."""
    return {m.group("name") for m in _VAR.finditer(text) if m.group("name")}


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``KEY=value`` lines (comments and blanks skipped), as compose reads a .env file."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise ValueError(f"{path}:{number}: not KEY=value: {raw!r}")
        key, value = line.split("=", 1)
        values[key.strip()] = value.strip()
    return values


def env_example_names(path: Path = ENV_EXAMPLE) -> set[str]:
    """Every variable .env.example names, set or shown commented out as ``# NAME=default``."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), flags=re.MULTILINE))


def load_compose_raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml with YAML anchors merged and variables substituted from ``env`` (.env.example)."""
    values = read_env_file() if env is None else env
    result: dict[str, Any] = _interpolate_tree(load_compose_raw(), values)
    return result


def active_services(services: Mapping[str, Any], profiles: list[str]) -> set[str]:
    """The services ``docker compose up`` starts with these profiles on: those with no profile, plus those
    with one of them (profiles only add services)."""
    return {
        name
        for name, service in services.items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def service_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's ``environment`` as a dict of strings (list or mapping form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def settings_env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads, nested models included (``PREFIX_A__B``)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    delimiter = str(settings.model_config.get("env_nested_delimiter") or "__")

    def walk(model: type[BaseModel], stem: str) -> Iterator[str]:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from walk(annotation, f"{stem}{name.upper()}{delimiter}")
            else:
                yield f"{stem}{name.upper()}"

    return set(walk(settings, prefix))


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined), comments dropped."""
    joined: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        joined.append(current + line)
        current = ""
    stages: dict[str, list[str]] = {}
    name = ""
    for instruction in joined:
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", instruction, flags=re.IGNORECASE)
        if match:
            name = match.group(1) or f"stage{len(stages)}"
            stages[name] = [instruction]
        elif name:
            stages[name].append(instruction)
    return stages


def stage_instructions(stage: str, keyword: str) -> list[str]:
    """The arguments of every ``keyword`` instruction in a stage, following its ``FROM <stage>`` chain."""
    stages = dockerfile_stages()
    found: list[str] = []
    chain: list[str] = []
    current: str | None = stage
    while current in stages:
        chain.append(current)
        base = stages[current][0].split()[1]
        current = base if base in stages else None
    for name in reversed(chain):
        for instruction in stages[name][1:]:
            word, _, rest = instruction.partition(" ")
            if word.upper() == keyword.upper():
                found.append(rest.strip())
    return found


def dockerfile_env(stage: str) -> dict[str, str]:
    """``ENV`` values a stage sets (``KEY=value`` pairs, whitespace separated)."""
    values: dict[str, str] = {}
    for rest in stage_instructions(stage, "ENV"):
        for pair in rest.split():
            key, _, value = pair.partition("=")
            values[key] = value
    return values
