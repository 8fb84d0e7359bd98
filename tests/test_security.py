"""Transport security settings and the production profile (table-driven): each insecure setting is refused with a
message naming the setting and the fix; secrets never print; each client library gets the same configuration."""

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.cli import main
from streams.security import aiokafka_config, kafka_python_config, production_problems, redis_kwargs
from streams.settings import Settings

SECURE = dict(
    profile="production", kafka_bootstrap="kafka:9093", kafka_security_protocol="SASL_SSL",
    kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="rollguard", kafka_sasl_password="kpw-secret",
    redis_url="rediss://redis:6380/0", redis_username="rollguard", redis_password="rpw-secret",
    signing_key="sk-secret", signing_key_id="k1", user_key="uk-secret", operator_keys="op-1:ok-secret",
)  # fmt: skip


def settings(**over) -> Settings:
    return Settings(**{**SECURE, **over})


def test_secure_settings_pass():
    assert production_problems(settings()) == []


def test_mtls_passes():
    s = settings(kafka_security_protocol="SSL", kafka_ssl_certfile="/c.pem", kafka_ssl_keyfile="/k.pem",
                 kafka_sasl_username=None, kafka_sasl_password=None)  # fmt: skip
    assert production_problems(s) == []


INSECURE = [
    # what is wrong, overrides, the setting the message must start with, a word of the fix
    ("plaintext kafka", dict(kafka_security_protocol="PLAINTEXT"), "kafka_security_protocol", "SASL_SSL"),
    ("sasl without tls", dict(kafka_security_protocol="SASL_PLAINTEXT"), "kafka_security_protocol", "SASL_SSL"),
    ("sasl plain mechanism", dict(kafka_sasl_mechanism="PLAIN"), "kafka_sasl_mechanism", "SCRAM-SHA-512"),
    ("sasl without password", dict(kafka_sasl_password=None), "kafka_sasl_username", "PASSWORD"),
    ("ssl without client cert", dict(kafka_security_protocol="SSL"), "kafka_ssl_certfile", "mTLS"),
    ("redis without tls", dict(redis_url="redis://redis:6379/0"), "redis_url", "rediss://"),
    ("redis without auth", dict(redis_username=None, redis_password=None), "redis_password", "ACL"),
    ("unsigned commands", dict(signing_key=None), "signing_key", "ROLLGUARD_SIGNING_KEY"),
    ("development user key", dict(user_key=None), "user_key", "ROLLGUARD_USER_KEY"),
    ("unsigned controls", dict(operator_keys=None), "operator_keys", "ROLLGUARD_OPERATOR_KEYS"),
]


@pytest.mark.parametrize("name,over,setting,fix", INSECURE, ids=[c[0] for c in INSECURE])
def test_each_insecure_setting_is_refused(name, over, setting, fix):
    over = {k: v for k, v in over.items()}
    if over.get("user_key", "") is None:
        del over["user_key"]
        s = Settings(**{k: v for k, v in SECURE.items() if k != "user_key"})
    else:
        s = settings(**over)
    problems = production_problems(s)
    assert len(problems) == 1, problems
    assert problems[0].startswith(setting + ":") and fix in problems[0]


@pytest.mark.parametrize("name,over,setting,fix", INSECURE[:7], ids=[c[0] for c in INSECURE[:7]])
def test_worker_refuses_to_start(name, over, setting, fix, monkeypatch, capsys):
    for k, v in {**SECURE, **over}.items():
        if v is None:
            monkeypatch.delenv(f"ROLLGUARD_{k.upper()}", raising=False)
        else:
            monkeypatch.setenv(f"ROLLGUARD_{k.upper()}", str(v))
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "production profile" in err and setting in err
    for secret in ("kpw-secret", "rpw-secret", "sk-secret", "uk-secret", "ok-secret"):
        assert secret not in err


def test_secrets_never_print():
    s = settings(kafka_ssl_key_password="kp-secret")
    text = repr(s) + str(s) + str(s.model_dump()) + s.model_dump_json()
    for secret in ("kpw-secret", "rpw-secret", "sk-secret", "uk-secret", "kp-secret", "ok-secret"):
        assert secret not in text


def test_client_configs():
    s = settings()
    kp = kafka_python_config(s)
    assert (kp["security_protocol"], kp["sasl_mechanism"], kp["sasl_plain_username"], kp["sasl_plain_password"]) == (
        "SASL_SSL", "SCRAM-SHA-512", "rollguard", "kpw-secret")
    ak = aiokafka_config(s)
    assert ak["security_protocol"] == "SASL_SSL" and isinstance(ak["ssl_context"], ssl.SSLContext)
    assert ak["ssl_context"].verify_mode == ssl.CERT_REQUIRED and ak["ssl_context"].check_hostname
    assert redis_kwargs(s) == {"username": "rollguard", "password": "rpw-secret"}
    plain = Settings()
    assert kafka_python_config(plain) == {} and aiokafka_config(plain) == {} and redis_kwargs(plain) == {}


def test_dev_profile_allows_plaintext():
    s = Settings(kafka_bootstrap="localhost:9092", redis_url="redis://localhost:6379/0")
    assert s.profile == "dev"


@pytest.mark.parametrize("over,where", [
    (dict(profile="prod"), "profile"),
    (dict(kafka_security_protocol="TLS"), "kafka_security_protocol"),
    (dict(kafka_sasl_mechanism="SCRAM-SHA-1"), "kafka_sasl_mechanism"),
    (dict(kafka_ssl_certfile="/c.pem"), "kafka_ssl_keyfile"),
])  # fmt: skip
def test_invalid_values_are_located(over, where):
    with pytest.raises(ValidationError) as e:
        settings(**over)
    assert where in str(e.value)


# --- a real Redis with an ACL user: the worker's client authenticates with the settings' user and password -------


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory):
    import subprocess

    from streams.live.embedded import _wait_port, free_port, redis_binary

    port, d = free_port(), tmp_path_factory.mktemp("acl-redis")
    log = d / "redis.log"
    argv = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(d), "--maxmemory-policy", "noeviction",
            "--user", "default", "off",  # no anonymous access
            "--user", "rollguard", "on", ">rpw-secret", "~*", "+@all"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    _wait_port(port, proc, "redis-server", log)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("user,password,ok", [
    ("rollguard", "rpw-secret", True),
    ("rollguard", "wrong", False),
    (None, None, False),
])  # fmt: skip
def test_redis_acl_user(acl_redis, user, password, ok):
    import asyncio

    from streams.live.store import RedisStore, StoreError, redis_client

    s = Settings(redis_url=acl_redis, redis_username=user, redis_password=password)

    async def check():
        r = redis_client(s.redis_url, **redis_kwargs(s))
        try:
            await RedisStore(r, "acl").check()
        finally:
            await r.aclose()

    if ok:
        asyncio.run(check())
    else:
        with pytest.raises(StoreError) as e:
            asyncio.run(check())
        msg = str(e.value).lower()
        assert ("password" in msg or "auth" in msg) and "rpw-secret" not in msg


def test_status_reads_redis_as_the_acl_user(acl_redis, monkeypatch, capsys):
    monkeypatch.setenv("ROLLGUARD_REDIS_URL", acl_redis)
    monkeypatch.setenv("ROLLGUARD_REDIS_USERNAME", "rollguard")
    monkeypatch.setenv("ROLLGUARD_REDIS_PASSWORD", "rpw-secret")
    assert main(["status", "--json"]) == 0


@pytest.mark.parametrize("over,protocol,mechanism", [
    (dict(), "SASL_SSL", "SCRAM-SHA-512"),
    (dict(kafka_security_protocol="SSL", kafka_sasl_username=None, kafka_sasl_password=None), "SSL", None),
    (dict(kafka_security_protocol="PLAINTEXT"), None, None),
])  # fmt: skip
def test_the_faust_worker_gets_the_same_kafka_security(over, protocol, mechanism):
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.live.app import faust_settings

    cfg = faust_settings(settings(**over))
    if protocol is None:
        assert cfg["broker_credentials"] is None
        return
    auth = credentials_to_aiokafka_auth(cfg["broker_credentials"])
    assert auth["security_protocol"] == protocol and auth.get("sasl_mechanism") == mechanism
    assert isinstance(auth["ssl_context"], ssl.SSLContext) and auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    if mechanism:
        assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("rollguard", "kpw-secret")


# --- a real Redis over TLS (Debian's redis-server is built with TLS; .ci/run installs it): server verification by
# CA, client certificates, the ACL user — all from the settings ---------------------------------------------------


def _tls_redis_binary() -> str | None:
    import shutil
    import subprocess

    for path in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if path and Path(path).exists():
            # a config that fails on purpose at its last line: a build without TLS fails earlier, at tls-port
            out = subprocess.run([path, "--port", "0", "--tls-port", "0", "--not-a-directive", "1"],
                                 capture_output=True, text=True, timeout=10)  # fmt: skip
            if ">>> 'tls-port" not in out.stdout + out.stderr:
                return path
    return None


def _openssl(*args: str, cwd) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    import shutil
    import subprocess

    from streams.live.embedded import _wait_port, free_port

    binary = _tls_redis_binary()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("needs a redis-server built with TLS and openssl (apt-get install redis-server openssl)")
    d = tmp_path_factory.mktemp("tls-redis")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    for name in ("server", "client"):
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)  # fmt: skip
    port, log = free_port(), d / "redis.log"
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(d),
            "--tls-cert-file", str(d / "server.pem"), "--tls-key-file", str(d / "server.key"),
            "--tls-ca-cert-file", str(d / "ca.pem"), "--tls-auth-clients", "yes",
            "--maxmemory-policy", "noeviction", "--user", "default", "off",
            "--user", "rollguard", "on", ">rpw-secret", "~*", "+@all"]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    _wait_port(port, proc, "redis-server (TLS)", log)
    yield f"rediss://127.0.0.1:{port}/0", d
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("ca,client_cert,password,refused", [
    (True, True, "rpw-secret", None),  # verified server, client certificate, ACL user
    (False, True, "rpw-secret", "CERTIFICATE_VERIFY_FAILED"),  # the server is not trusted without the CA
    (True, False, "rpw-secret", "reset|closed|alert|EOF"),  # the server requires a client certificate
    (True, True, "wrong", "username-password"),  # TLS is no substitute for the ACL password
])  # fmt: skip
def test_redis_over_tls(tls_redis, ca, client_cert, password, refused):
    import re

    import asyncio

    from streams.live.store import RedisStore, StoreError, redis_client

    url, d = tls_redis
    s = Settings(redis_url=url, redis_username="rollguard", redis_password=password,
                 redis_ssl_cafile=str(d / "ca.pem") if ca else None,
                 redis_ssl_certfile=str(d / "client.pem") if client_cert else None,
                 redis_ssl_keyfile=str(d / "client.key") if client_cert else None)  # fmt: skip

    async def check():
        r = redis_client(s.redis_url, **redis_kwargs(s))
        try:
            await RedisStore(r, "tls").check()
            await r.set(b"tls:probe", b"1")
            assert await r.get(b"tls:probe") == b"1"
        finally:
            await r.aclose()

    if refused is None:
        asyncio.run(check())
    else:
        with pytest.raises(StoreError) as e:
            asyncio.run(check())
        assert re.search(refused, str(e.value)) and "rpw-secret" not in str(e.value), str(e.value)
