"""The http tool: API routing to endpoints declared in a config file, and nowhere else.

A config (TOML, YAML or JSON) lists endpoints::

    [[endpoints]]
    name = "weather"
    method = "GET"                              # GET or POST
    url = "http://api.example/v1/weather/{city}"  # {name}: a parameter, filled into the path
    description = "current weather of a city"
    params = {type = "object", properties = {city = {type = "string"}}, required = ["city"]}

A call names an endpoint and gives ``params``, checked against that endpoint's schema.
Placeholders are percent-encoded (``/``, ``?``, ``@`` included) and the other parameters go
to the query string (GET) or a JSON body (POST); the built URL must keep the declared
scheme, host and port.  Redirects are not followed and proxy variables are ignored.
"""
from __future__ import annotations

import json
import re
import string
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import jsonschema

from topology.modelcfg import ConfigError, load_mapping

from .protocol import ToolFailure, schema_error
from .registry import Tool

MAX_BODY_BYTES = 64 << 10
DEFAULT_TIMEOUT_S = 10.0
ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    url: str
    params: dict
    description: str
    placeholders: tuple[str, ...]

    def origin(self) -> tuple[str, str]:
        parts = urllib.parse.urlsplit(self.url.replace("{", "").replace("}", ""))
        return parts.scheme, parts.netloc


def load_endpoints(path: str | Path) -> dict[str, Endpoint]:
    data = load_mapping(path)
    endpoints = {}
    for i, raw in enumerate(data.get("endpoints", [])):
        where = f"{path}: endpoints[{i}]"
        if not isinstance(raw, dict) or not ENDPOINT_NAME.match(str(raw.get("name", ""))):
            raise ConfigError(f"{where}: needs a name of letters, digits, _ . - (got {raw!r:.80})")
        method = str(raw.get("method", "GET")).upper()
        if method not in ("GET", "POST"):
            raise ConfigError(f"{where}: method must be GET or POST, got {method!r}")
        url = str(raw.get("url", ""))
        scheme, netloc, *_ = urllib.parse.urlsplit(url)
        if scheme not in ("http", "https") or not netloc or "{" in netloc:
            raise ConfigError(f"{where}: url must be http(s)://HOST[:PORT]/... with placeholders only after the host, "
                              f"got {url!r}")
        placeholders = tuple(f for _, f, _, _ in string.Formatter().parse(url) if f)
        params = raw.get("params", {"type": "object"})
        try:
            jsonschema.Draft202012Validator.check_schema(params)
        except jsonschema.SchemaError as e:
            raise ConfigError(f"{where}: params is not a valid JSON Schema: {e.message}") from None
        endpoints[raw["name"]] = Endpoint(raw["name"], method, url, params, str(raw.get("description", "")),
                                          placeholders)
    if not endpoints:
        raise ConfigError(f"{path}: declares no [[endpoints]]")
    return endpoints


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise ToolFailure("HttpRedirectRefused", f"the endpoint redirected ({code}) to {newurl[:200]}; "
                                                 "redirects are not followed")


def _request(endpoint: Endpoint, params: dict) -> urllib.request.Request:
    filled = {k: urllib.parse.quote(str(params[k]), safe="") for k in endpoint.placeholders}
    missing = [k for k in endpoint.placeholders if k not in params]
    if missing:
        raise ToolFailure("InvalidArguments", f"endpoint {endpoint.name!r} needs {', '.join(missing)}")
    url = endpoint.url.format(**filled)
    rest = {k: v for k, v in params.items() if k not in endpoint.placeholders}
    body = None
    if endpoint.method == "GET" and rest:
        url += ("&" if "?" in url else "?") + urllib.parse.urlencode(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in rest.items()})
    elif endpoint.method == "POST":
        body = json.dumps(rest).encode()
    parts = urllib.parse.urlsplit(url)
    if (parts.scheme, parts.netloc) != endpoint.origin():
        raise ToolFailure("HostRefused", f"the request for {endpoint.name!r} would leave {endpoint.origin()[1]}")
    return urllib.request.Request(url, data=body, method=endpoint.method,
                                  headers={"Content-Type": "application/json"} if body is not None else {})


def http_tool(config: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> Tool:
    endpoints = load_endpoints(config)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())

    def run(arguments: dict) -> dict:
        endpoint = endpoints.get(arguments["endpoint"])
        if endpoint is None:
            raise ToolFailure("UnknownEndpoint", f"no endpoint {arguments['endpoint'][:80]!r}; declared: "
                                                 f"{', '.join(endpoints)}")
        params = arguments.get("params", {})
        problem = schema_error(endpoint.params, params)
        if problem:
            raise ToolFailure("InvalidArguments", f"params of {endpoint.name!r}: {problem}")
        try:
            response = opener.open(_request(endpoint, params), timeout=timeout_s)
        except urllib.error.HTTPError as e:
            response = e
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise ToolFailure("HttpError", f"{endpoint.name}: {getattr(e, 'reason', e)}") from None
        with response:
            body = response.read(MAX_BODY_BYTES + 1)
        return {"status": response.status, "content_type": response.headers.get("Content-Type", ""),
                "body": body[:MAX_BODY_BYTES].decode(errors="replace"), "truncated": len(body) > MAX_BODY_BYTES}

    lines = "; ".join(f"{e.name} ({e.method}): {e.description}" for e in endpoints.values())
    return Tool("http", f"Call a declared HTTP API endpoint. Endpoints: {lines}",
                {"type": "object",
                 "properties": {"endpoint": {"enum": list(endpoints)}, "params": {"type": "object"}},
                 "required": ["endpoint"], "additionalProperties": False}, run)
