"""The API's contract as the gateway serves it, generated from the code.

``write_site(DIR)`` builds every service's app (``build_app``, nothing started: no database,
no broker), and writes a static site the gateway serves with ``file_server``
(``gateway/Caddyfile``, ``API_DOCS_DIR``):

- ``openapi.json``: ONE OpenAPI 3.1 document of everything the gateway routes to a service:
  each service's public document (``shared.openapi``), merged; the Fluent Community alias of
  every ``/api`` operation (the gateway rewrites ``/wp-json/fluent-community/v2/...`` to
  ``/api/...``); and the statuses the gateway itself answers (413, 503, 429);
- ``asyncapi.json``: an AsyncAPI 3.0 document of every topic of ``shared.events``: its key,
  partitions, payload schema, and which processes publish and consume it (their
  ``ServiceSpec.publishes`` and ``subscriptions``);
- ``docs/``: Swagger UI over ``openapi.json``, its assets served from here (no CDN);
- ``index.json``: where the above and the health paths are (the gateway's ``/``).

``lessonstream dev`` writes it before it starts the gateway; the gateway's image writes it
in its first build stage (``gateway/Dockerfile``); ``lessonstream contract --out DIR`` (or
``python -m lessonstream.contract --out DIR``) writes it anywhere.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import shutil
from collections import defaultdict
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from lessonstream.stack import PROCESSES, SERVICES
from shared.events import COMPACTED_TOPICS, EVENT_TYPES, TOPIC_PARTITIONS, Topic
from shared.openapi import DEFAULT_DESCRIPTIONS, ERROR_REF, RETRY_AFTER, SECURITY_SCHEMES
from shared.service import ServiceSpec

TITLE = "Lessonstream API"
VERSION = "1.0.0"
FLUENT_PREFIX = "/wp-json/fluent-community/v2"
FLUENT_TAG = "Fluent Community aliases"
DOCS_PATH = "/api/docs/"
OPENAPI_PATH = "/api/openapi.json"
ASYNCAPI_PATH = "/api/asyncapi.json"
# The Swagger UI files of the fastapi-offline wheel, served from the site's docs/ folder.
DOCS_ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png")
KAFKA_BINDING = "0.5.0"


def service_apps() -> dict[str, FastAPI]:
    """Every process's app (the certificate worker too: it publishes and consumes), built
    with its default settings and not started."""
    apps: dict[str, FastAPI] = {}
    for process in PROCESSES:
        module, function = process.factory.split(":")
        apps[process.name] = getattr(importlib.import_module(module), function)()
    return apps


def _spec(app: FastAPI) -> ServiceSpec[Any]:
    spec: ServiceSpec[Any] = app.state.runtime.spec
    return spec


# ------------------------------------------------------------------ OpenAPI


def _renamed_refs(node: Any, renames: dict[str, str]) -> Any:
    if isinstance(node, dict):
        found = {key: _renamed_refs(value, renames) for key, value in node.items()}
        ref = found.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            found["$ref"] = f"#/components/schemas/{renames.get(name, name)}"
        return found
    if isinstance(node, list):
        return [_renamed_refs(value, renames) for value in node]
    return node


def _gateway_statuses(operation: dict[str, Any]) -> None:
    """What the gateway answers before or instead of the service, in the same error shape."""
    responses: dict[str, Any] = operation["responses"]

    def add(status: int, headers: dict[str, Any] | None = None) -> None:
        response = responses.setdefault(str(status), {"description": DEFAULT_DESCRIPTIONS[status]})
        response.setdefault("content", {})["application/json"] = {"schema": copy.deepcopy(ERROR_REF)}
        if headers:
            response.setdefault("headers", {}).update(copy.deepcopy(headers))

    if "requestBody" in operation:
        add(413)
    if "security" in operation:
        # Failed application passwords are rate-limited per user and per client address.
        add(429, {"Retry-After": RETRY_AFTER})
        # Application passwords over plain HTTP in production: 403 https_required.
        add(403)
    add(503, {"Retry-After": RETRY_AFTER})  # also when the service itself is down
    operation["responses"] = dict(sorted(responses.items()))


def _fluent_aliases(paths: dict[str, Any]) -> dict[str, Any]:
    aliases: dict[str, Any] = {}
    for path, item in paths.items():
        if not path.startswith("/api/"):
            continue
        alias: dict[str, Any] = {}
        for method, operation in item.items():
            copied = copy.deepcopy(operation)
            copied["operationId"] = f"fluent_{operation['operationId']}"
            copied["tags"] = [FLUENT_TAG]
            copied["description"] = f"The same operation as `{method.upper()} {path}`, at the Fluent Community path."
            copied["x-alias-of"] = operation["operationId"]
            alias[method] = copied
        aliases[FLUENT_PREFIX + path.removeprefix("/api")] = alias
    return aliases


def openapi_document(apps: dict[str, FastAPI]) -> dict[str, Any]:
    """The one document of the API at the gateway (see the module's docstring)."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    operation_ids: set[str] = set()
    tags: dict[str, str] = {}
    for name, app in apps.items():
        document = app.openapi()
        if not document.get("paths"):
            continue
        own = document.get("components", {}).get("schemas", {})
        # A schema of the same name but another shape in two services gets the service's prefix.
        renames = {
            schema: f"{name.title()}{schema}" for schema, body in own.items()
            if schema in schemas and schemas[schema] != body
        }
        document = _renamed_refs(document, renames)
        for schema, body in document.get("components", {}).get("schemas", {}).items():
            schemas[renames.get(schema, schema)] = body
        for path, item in document["paths"].items():
            for method, operation in item.items():
                if method in paths.get(path, {}):
                    raise ValueError(f"{method.upper()} {path} is served by two services")
                if operation["operationId"] in operation_ids:
                    raise ValueError(f"operationId {operation['operationId']} is used twice")
                operation_ids.add(operation["operationId"])
                operation.setdefault("tags", [name])
                operation["x-service"] = name
                for tag in operation["tags"]:
                    tags.setdefault(tag, f"Served by {name}")
                _gateway_statuses(operation)
                paths.setdefault(path, {})[method] = operation
    paths.update(_fluent_aliases(paths))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": (
                "Every operation the gateway routes, generated from the services' code. Errors share one "
                "shape, `{\"code\", \"message\", \"data\": {\"status\", ...}}` (the `Error` schema). "
                f"Every `/api/...` path is also served at `{FLUENT_PREFIX}/...` (tag: {FLUENT_TAG}). "
                f"The events: {ASYNCAPI_PATH}."
            ),
        },
        "servers": [{"url": "/", "description": "The gateway"}],
        "tags": [{"name": tag, "description": text} for tag, text in tags.items()]
        + [{"name": FLUENT_TAG, "description": f"`{FLUENT_PREFIX}/...`: the same operations as `/api/...`"}],
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items())), "securitySchemes": copy.deepcopy(SECURITY_SCHEMES)},
    }


# ------------------------------------------------------------------ AsyncAPI


def asyncapi_document(apps: dict[str, FastAPI]) -> dict[str, Any]:
    """Every topic with its key, partitions, payload and who publishes and consumes it."""
    producers: dict[Topic, list[str]] = defaultdict(list)
    consumers: dict[Topic, list[tuple[str, str]]] = defaultdict(list)
    for name, app in apps.items():
        spec = _spec(app)
        for topic in spec.publishes:
            producers[topic].append(name)
        for sub in spec.subscriptions:
            consumers[sub.topic].append((name, sub.consumer))
        if spec.subscriptions:
            producers[Topic.DEAD_LETTER].append(name)  # a consumer dead-letters what it gives up on
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for topic in Topic:
        model = EVENT_TYPES[topic]
        message = model.__name__
        payload = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(payload.pop("$defs", {}))
        schemas[message] = payload
        messages[message] = {
            "name": message,
            "title": message,
            "summary": (model.__doc__ or message).strip().split("\n\n")[0].replace("\n", " "),
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{message}"},
            "bindings": {"kafka": {
                "key": {"type": "string", "description": f"`{model.key_format}`"},
                "bindingVersion": KAFKA_BINDING,
            }},
        }
        who = ", ".join(sorted(set(producers[topic]))) or "nobody"
        channels[topic.value] = {
            "address": topic.value,
            "title": topic.value,
            "description": f"Key `{model.key_format}`, {TOPIC_PARTITIONS[topic]} partitions; published by {who}.",
            "messages": {message: {"$ref": f"#/components/messages/{message}"}},
            "bindings": {"kafka": {
                "partitions": TOPIC_PARTITIONS[topic],
                "topicConfiguration": {"cleanup.policy": ["compact" if topic in COMPACTED_TOPICS else "delete"]},
                "bindingVersion": KAFKA_BINDING,
            }},
            "x-key": model.key_format,
            "x-publishers": sorted(set(producers[topic])),
            "x-consumers": [{"process": process, "group": group} for process, group in consumers[topic]],
        }
        reference = {"$ref": f"#/channels/{topic.value}"}
        one_message = [{"$ref": f"#/channels/{topic.value}/messages/{message}"}]
        for process in sorted(set(producers[topic])):
            operations[f"{process}-publishes-{topic.value}"] = {
                "action": "send", "channel": reference, "messages": one_message,
                "summary": f"{process} publishes {message} events (through its transactional outbox)",
            }
        for process, group in consumers[topic]:
            operations[f"{process}-consumes-{topic.value}"] = {
                "action": "receive", "channel": reference, "messages": one_message,
                "summary": f"{process} consumes {message} events (consumer group `{group}`)",
                "bindings": {"kafka": {"groupId": {"type": "string", "const": group},
                                       "bindingVersion": KAFKA_BINDING}},
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Lessonstream events",
            "version": VERSION,
            "description": "Every Kafka topic, generated from `shared/events.py` and the services' specs. "
                           "Topic names get the deployment's `KAFKA_TOPIC_PREFIX`. Events carry the envelope "
                           "`event_id`, `type`, `version`, `occurred_at`; consumers are idempotent by `event_id`.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }


# ------------------------------------------------------------------ the site

DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Lessonstream API</title>
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" type="image/png" href="favicon.png">
  <link rel="stylesheet" href="swagger-ui.css">
</head>
<body>
  <p style="font-family: sans-serif; margin: 1em 2em">
    <a href="../openapi.json">openapi.json</a> &middot; <a href="../asyncapi.json">asyncapi.json</a> (events)
  </p>
  <div id="swagger-ui"></div>
  <script src="swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({url: "../openapi.json", dom_id: "#swagger-ui", deepLinking: true});
  </script>
</body>
</html>
"""


def index() -> dict[str, Any]:
    """The gateway's ``/``: where the documents and the health paths are."""
    return {
        "name": TITLE,
        "docs": DOCS_PATH,
        "openapi": OPENAPI_PATH,
        "asyncapi": ASYNCAPI_PATH,
        "fluent_prefix": FLUENT_PREFIX,
        "health": {name: {"health": f"/health/{name}", "ready": f"/ready/{name}"} for name in SERVICES},
    }


def _write(path: Path, data: str | bytes) -> None:
    # Replaced whole, so that a gateway serving the folder never reads half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def write_site(out: Path, apps: dict[str, FastAPI] | None = None) -> None:
    apps = apps if apps is not None else service_apps()
    _write(out / "openapi.json", json.dumps(openapi_document(apps), indent=1))
    _write(out / "asyncapi.json", json.dumps(asyncapi_document(apps), indent=1))
    _write(out / "index.json", json.dumps(index(), indent=1))
    _write(out / "docs" / "index.html", DOCS_PAGE)
    static = resources.files("fastapi_offline") / "static"
    for asset in DOCS_ASSETS:
        with resources.as_file(static / asset) as source:
            shutil.copyfile(source, out / "docs" / f"{asset}.tmp")
        (out / "docs" / f"{asset}.tmp").replace(out / "docs" / asset)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the API's contract (OpenAPI, AsyncAPI, docs) into a folder")
    parser.add_argument("--out", type=Path, required=True)
    write_site(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
