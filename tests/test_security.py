"""Security defaults: local binding, no share link, a login that is enforced, no pickles anywhere,
sanitized names, and a Gradio that serves only what it made (docs/security.md)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from app import limits as limits_module
from app.commands import serve
from app.preferences.profiles import Profile, save_profile
from app.storage import REPO_ROOT
from tests.reliability_support import AUTH, SERVER_MAX_NEW_TOKENS, SERVER_QUEUE_SIZE, health, shared_server


def serve_args(*argv: str):
    from app.cli import build_parser

    return build_parser(only="serve").parse_args(["serve", *argv])


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("STEERING_LAB_AUTH", "STEERING_LAB_LOCK_MODEL", "STEERING_LAB_PORT"):
        monkeypatch.delenv(name, raising=False)
    for item in fields(limits_module.Limits):
        monkeypatch.delenv(limits_module.env_name(item.name), raising=False)


def test_serve_defaults_are_local_private_and_limited(clean_env):
    args = serve_args()
    options = serve.launch_options(args, limits_module.from_args(args))
    assert options["server_name"] == "127.0.0.1" and options["server_port"] == 7860
    assert options["share"] is False and options["auth"] is None
    assert options["show_error"] is False  # no tracebacks for unexpected errors
    assert options["max_file_size"] == 1_000_000 and options["allowed_paths"] == []
    blocked = [Path(p) for p in options["blocked_paths"]]
    for folder in (REPO_ROOT / ".git", REPO_ROOT / ".venv", REPO_ROOT / "app"):
        assert folder.resolve() in blocked
    assert any(p.name == "models" for p in blocked) and any(p.name == "profiles" for p in blocked)
    assert args.lock_model is False


def test_auth_comes_from_the_flag_or_the_environment(clean_env, monkeypatch):
    assert serve.launch_options(serve_args("--auth", "amy:pa:ss"), limits_module.Limits())["auth"] == ("amy", "pa:ss")
    monkeypatch.setenv("STEERING_LAB_AUTH", "teacher:class-2025")
    assert serve.launch_options(serve_args(), limits_module.Limits())["auth"] == ("teacher", "class-2025")
    for bad in ("nopassword", ":pass", "user:"):
        with pytest.raises(ValueError, match="--auth must look like USER:PASSWORD"):
            serve.launch_options(serve_args("--auth", bad), limits_module.Limits())


def test_an_open_host_without_a_login_is_warned_about(clean_env, caplog):
    serve.launch_options(serve_args("--host", "0.0.0.0"), limits_module.Limits())
    assert "without --auth" in caplog.text


def test_limits_come_from_flags_over_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("STEERING_LAB_MAX_NEW_TOKENS", "512")
    monkeypatch.setenv("STEERING_LAB_MAX_STRENGTH", "20")
    limits = limits_module.from_args(serve_args("--max-new-tokens-limit", "64", "--queue-size-limit", "8"))
    assert (limits.max_new_tokens, limits.max_strength, limits.queue_size) == (64, 20.0, 8)
    monkeypatch.setenv("STEERING_LAB_MAX_ROWS", "lots")
    with pytest.raises(ValueError, match="STEERING_LAB_MAX_ROWS='lots' is not a number"):
        limits_module.from_env()
    with pytest.raises(ValueError, match="limit max_new_tokens must be a positive number"):
        limits_module.Limits(max_new_tokens=0)


# --- the served app -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served():
    return shared_server()


@pytest.mark.slow
def test_the_environment_reaches_the_server(served):
    info = health(served.client())
    assert info["limits"]["max_new_tokens"] == SERVER_MAX_NEW_TOKENS
    assert info["limits"]["queue_size"] == SERVER_QUEUE_SIZE
    assert "password" not in str(info).lower() and AUTH[1] not in str(info)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "route"),
    [
        ("GET", "/config"),
        ("GET", "/gradio_api/info"),
        ("POST", "/gradio_api/call/generate"),
        ("POST", "/gradio_api/call/health"),
        ("POST", "/gradio_api/upload"),
        ("GET", "/gradio_api/file=/etc/passwd"),
        ("POST", "/v1/chat/completions"),  # the REST API (app/api) needs the same login
        ("GET", "/v1/concepts"),
        ("GET", "/v1/vectors/happy"),
        ("GET", "/openapi.json"),
        ("GET", "/docs"),
        ("GET", "/docs/assets/swagger-ui-bundle.js"),
    ],
)
def test_with_auth_set_an_unauthenticated_request_is_refused(served, method, route):
    import httpx

    response = httpx.request(method, served.url + route, json={"data": []}, timeout=30)
    assert response.status_code in (401, 403), (route, response.status_code, response.text[:200])
    assert "root:" not in response.text


@pytest.mark.slow
def test_a_wrong_password_is_refused(served):
    import httpx
    from gradio_client import Client

    response = httpx.post(served.url + "/login", data={"username": AUTH[0], "password": "guess"}, timeout=30)
    assert response.status_code in (400, 401) and "access-token" not in response.headers.get("set-cookie", "")
    with pytest.raises(Exception, match="(?i)auth|login|401"):
        Client(served.url, verbose=False, analytics_enabled=False)


@pytest.mark.slow
def test_gradio_serves_no_file_it_did_not_make(served):
    paths = [
        "/etc/passwd",
        "../../../../../../etc/passwd",
        "%2Fetc%2Fpasswd",
        str(REPO_ROOT / "app" / "lab.py"),
        str(REPO_ROOT / "README.md"),
        str(served.root / "tiny-model" / "model.safetensors"),
        str(served.root / "concepts" / "happy.json"),
        str(served.root / "server.log"),
    ]
    with served.http() as http:
        assert http.get("/gradio_api/info").status_code == 200  # logged in: refusals below are about the files
        for path in paths:
            response = http.get(f"/gradio_api/file={path}")
            # 403: refused; 404: the client resolved the ../ into a route that does not exist
            assert response.status_code in (403, 404), (path, response.status_code)
            assert "root:" not in response.text and "import" not in response.text


@pytest.mark.slow
def test_a_locked_server_offers_no_model_switch(served):
    endpoints = served.client().view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/switch_model" not in endpoints and "/health" in endpoints


# --- the code base -----------------------------------------------------------------------------------

# Calls that unpickle (run code from a file) or evaluate text. None may appear outside tests/.
UNSAFE = {
    "torch.load": re.compile(r"\btorch\.load\s*\("),
    "pickle": re.compile(r"\b(c?pickle|dill|cloudpickle|joblib|shelve|marshal)\.(load|loads|Unpickler|open)\b"),
    "numpy allow_pickle": re.compile(r"allow_pickle\s*=\s*True"),
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "yaml.load": re.compile(r"\byaml\.(unsafe_)?load\s*\((?![^)]*SafeLoader)"),
    "eval/exec": re.compile(r"(?<![\w.])(eval|exec)\s*\("),
    "shell=True": re.compile(r"shell\s*=\s*True"),
    "trust_remote_code": re.compile(r"trust_remote_code\s*=\s*True"),
}


def _code_files() -> list[Path]:
    skip = {".venv", ".git", "tests", "cache", "node_modules", "test-artifacts"}
    return [
        path
        for path in REPO_ROOT.rglob("*.py")
        if not skip & set(path.relative_to(REPO_ROOT).parts) and path.name != "conftest.py"
    ]


def test_nothing_outside_the_tests_unpickles_or_evaluates():
    files = _code_files()
    assert len(files) > 20 and (REPO_ROOT / "app" / "steering" / "vectors.py") in files
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in UNSAFE.items():
                if pattern.search(code):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_scanner_would_catch_them():
    caught = [
        what
        for what, pattern in UNSAFE.items()
        for line in (
            "x = torch.load(path)",
            "pickle.loads(raw)",
            "np.load(f, allow_pickle=True)",
            "torch.load(p, weights_only=False)",
            "yaml.load(text)",
            "eval(text)",
            "subprocess.run(cmd, shell=True)",
            "from_pretrained(p, trust_remote_code=True)",
        )
        if pattern.search(line)
    ]
    assert sorted(set(caught)) == sorted(UNSAFE)
    assert not UNSAFE["eval/exec"].search("model.eval()") and not UNSAFE["yaml.load"].search(
        "yaml.load(t, Loader=yaml.SafeLoader)"
    )


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", "x" * 65, "bob.json", "", "name with spaces"])
def test_profile_names_are_sanitized(name, tmp_path):
    with pytest.raises(ValueError, match="bad profile name"):
        save_profile(Profile(name=name), tmp_path)
    assert list(tmp_path.rglob("*")) == []
