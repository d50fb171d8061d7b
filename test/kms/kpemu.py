#!/usr/bin/env python3
"""kpemu: a local stand-in for IBM Cloud IAM + Key Protect (v2 API), for tests and development.

Shape
-----
One process, one ThreadingHTTPServer on 127.0.0.1, three URL spaces on the same port:

  /identity/token, /oidc/token   IAM API-key token exchange (JWT-shaped HS256 tokens)
  /api/v2/...                    Key Protect v2 (keys, wrap/unwrap/rewrap, lifecycle,
                                 versions, policies, registrations)
  /_emu/...                      control API for tests (no auth; loopback only)

Layers, top to bottom:

  * `Handler`     HTTP plumbing: reads the request, echoes/mints `correlation-id`,
                  applies injected faults, writes the response, appends to the request log.
  * `Emulator`    the service: routing, IAM, access checks and every Key Protect rule.
                  All state lives in one dict guarded by one lock (`Emulator.lock`) and is
                  written atomically to STATE_DIR/state.json after every mutation.
  * crypto        the wrapped-key format.  AES-GCM is not in the Python standard library,
                  so a key version's 32-byte material is used for an HMAC-SHA256
                  encrypt-then-MAC construction (keystream = HMAC(enc_key, iv || counter),
                  tag = HMAC(mac_key, key id, version id, AAD, iv, ciphertext)).  The
                  result is wrapped like the real service's WDEK: base64 of a JSON
                  document {"ciphertext","iv","version","handle"}, where `handle` is the
                  key version.  It is opaque and authenticated, not compatible with IBM.
  * `ctl`         a small client for the control API (and a `token` helper) so tests and
                  scripts never hand-craft HTTP.

Time: every rule that depends on time (rotation interval, enable/restore cool-down,
restore window, purge wait, auto-purge, dual-auth window, token expiry) reads the
injectable clock `Emulator.now()` = wall clock + a persisted offset moved by
`/_emu/clock/advance`.  Control-API lifecycle calls skip the waiting rules; the Key
Protect API enforces them.

Secrets: API keys are stored only as SHA-256 hashes (the plaintext of the bootstrap key
is in STATE_DIR/apikey, mode 0600).  The request log never holds tokens, API keys,
plaintexts, ciphertexts or bodies.  Key material is in state.json (it is the emulator's
HSM).

See docs/emulator.md for the command line, the control API and the deviations from the
real service.
"""

import argparse
import base64
import binascii
import calendar
import collections
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# --------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------

KEY_TYPE = "application/vnd.ibm.kms.key+json"
VERSION_TYPE = "application/vnd.ibm.kms.key.version+json"
REGISTRATION_TYPE = "application/vnd.ibm.kms.registration+json"
POLICY_TYPE = "application/vnd.ibm.kms.policy+json"
ERROR_TYPE = "application/vnd.ibm.kms.error+json"
MORE_INFO = "https://cloud.ibm.com/apidocs/key-protect"
APIKEY_GRANT = "urn:ibm:params:oauth:grant-type:apikey"
ACCESS_LEVELS = ("manager", "reader", "none")
FAULT_KINDS = ("latency", "timeout", "status", "malformed", "plaintext", "answer", "lost_answer")
# `answer` faults: the request is served, then the answer's `ciphertext` is replaced
ANSWER_MUTATIONS = ("garbage_b64", "object", "number", "huge", "truncated")
HUGE_CIPHERTEXT_BYTES = 2 * 1024 * 1024
STATE_FORMAT = 1
DEK_BYTES = 32
MAX_PLAINTEXT_BYTES = 7500          # emulator choice (real limit UNCONFIRMED)
MAX_STANDARD_PAYLOAD = 7500
CONTROL_IAM_ID = "kpemu-control"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

DEFAULTS = {
    "token_lifetime": 3600,          # IAM access token lifetime, seconds
    "rotate_interval": 3600,         # one rotation per key per hour
    "cooldown": 30,                  # enable after disable / restore after delete
    "restore_window": 30 * 86400,    # restore possible for 30 days after delete
    "purge_wait": 4 * 3600,          # purge possible 4 h after delete
    "auto_purge": 90 * 86400,        # deleted keys vanish after 90 days
    "dual_auth_window": 7 * 86400,   # setKeyForDeletion authorisation lifetime
    "strict_registrations": False,   # registration writes need a service API key
}

# Key Protect / IAM action names (keyprotect-api.md section 9), used in the request log.
ACTION_NAMES = {
    "wrap": "kms.secrets.wrap",
    "unwrap": "kms.secrets.unwrap",
    "rewrap": "kms.secrets.rewrap",
    "rotate": "kms.secrets.rotate",
    "disable": "kms.secrets.disable",
    "enable": "kms.secrets.enable",
    "restore": "kms.secrets.restore",
    "setKeyForDeletion": "kms.secrets.setkeyfordeletion",
    "unsetKeyForDeletion": "kms.secrets.unsetkeyfordeletion",
    "sync": "kms.secrets.sync",
}
# Actions a Reader may perform; everything else needs Manager.
READER_ACTIONS = {
    "kms.secrets.read", "kms.secrets-metadata.read", "kms.secrets.list",
    "kms.secrets.head", "kms.secrets.wrap", "kms.secrets.unwrap", "kms.secrets.rewrap",
    "kms.secrets-key-versions.list", "kms.registrations.list", "kms.policies.read",
}
REGISTRATION_WRITES = {
    "kms.registrations.create", "kms.registrations.write", "kms.registrations.merge",
    "kms.registrations.delete",
}
REASON_PHRASES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 410: "Gone",
    422: "Unprocessable Entity", 429: "Too Many Requests",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout",
}


def phrase(status):
    return REASON_PHRASES.get(status) or http.client.responses.get(status, "Error")


# --------------------------------------------------------------------------------------
# Small helpers: time, encodings, files
# --------------------------------------------------------------------------------------

def rfc3339(ts):
    """Unix seconds -> '2026-01-05T10:00:00Z' (None passes through)."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"([Zz]|[+-]\d{2}:?\d{2})$")


def parse_rfc3339(text):
    """Lenient RFC 3339 parser (fractions, Z, +hh:mm, +hhmm). Returns Unix seconds or None."""
    if not isinstance(text, str):
        return None
    m = _RFC3339_RE.match(text.strip())
    if not m:
        return None
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    try:
        ts = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if m.group(7):
        ts += float(m.group(7))
    tz = m.group(8)
    if tz not in ("Z", "z"):
        sign = 1 if tz[0] == "+" else -1
        digits = tz[1:].replace(":", "")
        ts -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return ts


def b64e(data):
    return base64.b64encode(data).decode("ascii")


def b64url_e(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_d(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


_B64_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64decode_strict(text):
    """Standard base64 with padding. Returns (bytes, None) or (None, bad_byte_offset)."""
    if not isinstance(text, str):
        return None, 0
    body = text.rstrip("=")
    for i, ch in enumerate(body):
        if ch not in _B64_ALPHABET:
            return None, i
    if len(text) - len(body) > 2 or len(text) % 4 != 0:
        return None, len(body) - len(body) % 4
    try:
        return base64.b64decode(text, validate=True), None
    except (binascii.Error, ValueError):
        return None, len(body) - len(body) % 4


def atomic_write(path, data, mode=0o600):
    """Write bytes to path via temp file + fsync + rename + directory fsync."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_uuid():
    return str(uuid.uuid4())


def sha256_hex(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# Crypto: the wrapped-key (WDEK) format
# --------------------------------------------------------------------------------------

def _lp(*parts):
    """Length-prefixed concatenation (unambiguous encoding for MAC input)."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def _kdf(material, label):
    return hmac.new(material, b"kpemu-wrap-v1/" + label, hashlib.sha256).digest()


def _keystream(enc_key, iv, nbytes):
    out = bytearray()
    counter = 0
    while len(out) < nbytes:
        out += hmac.new(enc_key, iv + counter.to_bytes(8, "big"), hashlib.sha256).digest()
        counter += 1
    return bytes(out[:nbytes])


def _aad_bytes(aad):
    return len(aad).to_bytes(4, "big") + _lp(*(s.encode("utf-8") for s in aad))


def _tag(material, key_id, version_id, aad, iv, ct):
    msg = _lp(key_id.encode(), version_id.encode(), _aad_bytes(aad), iv, ct)
    return hmac.new(_kdf(material, b"mac"), msg, hashlib.sha256).digest()


def seal(material, key_id, version_id, aad, plaintext):
    """Wrap plaintext (bytes) under one key version. Handles key material. Returns WDEK str."""
    iv = os.urandom(12)
    ks = _keystream(_kdf(material, b"enc"), iv, len(plaintext))
    ct = bytes(a ^ b for a, b in zip(plaintext, ks))
    inner = ct + _tag(material, key_id, version_id, aad, iv, ct)
    envelope = {"ciphertext": b64e(inner), "iv": b64e(iv), "version": "4.0.0",
                "handle": version_id}
    return b64e(json.dumps(envelope, separators=(",", ":")).encode())


def parse_envelope(wdek):
    """Outer parse of a WDEK. Returns (handle, iv, inner) or None if not a kpemu envelope."""
    raw, _ = b64decode_strict(wdek)
    if raw is None:
        return None
    try:
        env = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(env, dict):
        return None
    fields = [env.get(k) for k in ("ciphertext", "iv", "handle")]
    if not all(isinstance(f, str) for f in fields):
        return None
    inner, _ = b64decode_strict(fields[0])
    iv, _ = b64decode_strict(fields[1])
    if inner is None or iv is None:
        return None
    return fields[2], iv, inner


def unseal(material, key_id, version_id, aad, iv, inner):
    """Verify and decrypt. Returns plaintext bytes, or None on any mismatch."""
    if len(inner) < 32:
        return None
    ct, tag = inner[:-32], inner[-32:]
    if not hmac.compare_digest(tag, _tag(material, key_id, version_id, aad, iv, ct)):
        return None
    ks = _keystream(_kdf(material, b"enc"), iv, len(ct))
    return bytes(a ^ b for a, b in zip(ct, ks))


# --------------------------------------------------------------------------------------
# Responses and errors
# --------------------------------------------------------------------------------------

class Resp:
    """An HTTP response: status, JSON-able body or bytes, extra headers."""

    def __init__(self, status, body=None, headers=None, content_type="application/json"):
        self.status = status
        self.body = body
        self.headers = dict(headers or {})
        self.content_type = content_type
        self.drop_connection = False   # timeout fault: close without answering

    def payload(self):
        if self.body is None:
            return b""
        if isinstance(self.body, (bytes, bytearray)):
            return bytes(self.body)
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


def collection(ctype, resources, extra_meta=None):
    meta = {"collectionType": ctype, "collectionTotal": len(resources)}
    meta.update(extra_meta or {})
    return {"metadata": meta, "resources": resources}


class KPError(Exception):
    """A Key Protect error: HTTP status + errorMsg + optional single reason."""

    def __init__(self, status, msg, code=None, reason=None, target=None, headers=None):
        super().__init__(msg)
        self.status = status
        self.msg = msg
        self.code = code
        self.reason = reason
        self.target = target
        self.headers = headers or {}

    def body(self):
        res = {"errorMsg": self.msg}
        if self.code:
            r = {"code": self.code, "message": self.reason or self.msg,
                 "status": self.status, "moreInfo": MORE_INFO}
            if self.target:
                r["target"] = self.target
            res["reasons"] = [r]
        return collection(ERROR_TYPE, [res])

    def resp(self):
        return Resp(self.status, self.body(), self.headers)


class IAMError(Exception):
    """An IAM error: {errorCode, errorMessage, errorDetails?, context}."""

    def __init__(self, status, code, message, details=None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def err_unauthorized():
    return KPError(401, "Unauthorized: The user does not have access to the specified resource")


def err_field(name, message, status=400, code="INVALID_FIELD_ERR"):
    return KPError(status, "Bad Request: The field `%s` is invalid. Please see `reasons` for "
                   "more details." % name, code, message, {"type": "field", "name": name})


def err_bad_body(message, target=None):
    return KPError(400, "Bad Request: The request body is invalid: %s" % message,
                   "BAD_BODY_ERR", message, target)


def err_key_not_found():
    return KPError(404, "Not Found: Key could not be retrieved: Please see `reasons` for more "
                   "details (KEY_NOT_FOUND_ERR)", "KEY_NOT_FOUND_ERR", "key does not exist")


def err_root_required(verb):
    return KPError(400, "Bad Request: Key could not be %s: Please see `reasons` for more "
                   "details (KEY_ROOT_REQ_ERR)" % verb, "KEY_ROOT_REQ_ERR",
                   "Requested action can only be completed with a root key")


def err_invalid_state(what, verb):
    return KPError(409, "Conflict: Key is not in %s state: Key could not be %s. Please see "
                   "`reasons` for more details." % (what, verb),
                   "KEY_ACTION_INVALID_STATE_ERR", "Key is not in a valid state")


def err_deleted(action):
    return KPError(410, "Gone: The key has been deleted and is no longer available. Please "
                   "provide a valid key when performing an '%s' action" % action,
                   "KEY_DELETED_ERR",
                   "Key has already been deleted. Please delete references to this key.")


def err_too_early():
    return KPError(409, "Conflict: Action could not be performed on key. Please see `reasons` "
                   "for more details.", "REQ_TOO_EARLY_ERR",
                   "The key was updated recently. Please wait and try again.")


# --------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------

class Ctx:
    """Per-request facts gathered for the request log (never secrets)."""

    def __init__(self):
        self.action = None
        self.key_id = None
        self.instance = None
        self.iam_id = None
        self.fault = None


CONTROL_PRINCIPAL = {"iam_id": CONTROL_IAM_ID, "access": "manager", "service": True,
                     "control": True, "instance": None}


class Emulator:
    """All emulator state and behaviour. Every public method takes `self.lock`."""

    def __init__(self, state_dir, config, region="us-south"):
        self.state_dir = os.path.abspath(state_dir)
        self.state_path = os.path.join(self.state_dir, "state.json")
        self.cfg = dict(DEFAULTS)
        self.cfg.update(config)
        self.region = region
        self.lock = threading.RLock()
        self.faults = []
        self.log = collections.deque(maxlen=20000)
        self.log_seq = 0
        self.fault_seq = 0
        self.info = {}
        self.state = self._load_or_create()
        self._ensure_apikey_file()

    # ---- persistence --------------------------------------------------------------

    def _load_or_create(self):
        if os.path.exists(self.state_path):
            with open(self.state_path, "r", encoding="utf-8") as f:
                state = json.load(f)
            if state.get("format") != STATE_FORMAT:
                raise SystemExit("kpemu: unsupported state format in %s" % self.state_path)
            return state
        guid = new_uuid()
        state = {
            "format": STATE_FORMAT,
            "created": time.time(),
            "clock_offset": 0.0,
            "token_secret": b64e(os.urandom(32)),
            "default_instance": guid,
            "instances": {guid: {"account": secrets.token_hex(16), "region": self.region,
                                 "created": time.time()}},
            "apikeys": {},
            "keys": {},
        }
        self.state = state
        self._save()
        return state

    def _save(self):
        atomic_write(self.state_path, json.dumps(self.state, indent=1, sort_keys=True))

    def _ensure_apikey_file(self):
        """Bootstrap Manager key: created with a fresh state, or if STATE_DIR/apikey is gone."""
        path = os.path.join(self.state_dir, "apikey")
        if os.path.exists(path) and self.state["apikeys"]:
            return
        with self.lock:
            created = self._new_apikey("manager", self.state["default_instance"], False,
                                       "bootstrap")
            atomic_write(path, created["apikey"], 0o600)

    # ---- clock ----------------------------------------------------------------------

    def now(self):
        return time.time() + self.state["clock_offset"]

    # ---- API keys and tokens -------------------------------------------------------

    def _new_apikey(self, access, instance, service, name=None):
        apikey = secrets.token_urlsafe(33)
        while apikey.startswith("-"):  # a leading '-' reads as an option on any command line
            apikey = secrets.token_urlsafe(33)
        kid = "ApiKey-" + new_uuid()
        iam_id = ("iam-ServiceId-" + new_uuid()) if service else \
            ("IBMid-" + secrets.token_hex(5).upper())
        self.state["apikeys"][kid] = {
            "hash": sha256_hex(apikey), "iam_id": iam_id, "access": access,
            "instance": instance, "service": bool(service), "revoked": False,
            "created": self.now(), "name": name or kid}
        self._save()
        return {"apikey": apikey, "id": kid, "iam_id": iam_id, "access": access,
                "instance_id": instance, "service": bool(service)}

    def _find_apikey(self, apikey):
        digest = sha256_hex(apikey)
        for kid, rec in self.state["apikeys"].items():
            if hmac.compare_digest(rec["hash"], digest):
                return kid, rec
        return None, None

    def _sign(self, signing_input):
        secret = base64.b64decode(self.state["token_secret"])
        return hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()

    def iam_token(self, form, ctx):
        grant = (form.get("grant_type") or [""])[0]
        apikey = (form.get("apikey") or [""])[0]
        if not grant:
            raise IAMError(400, "BXNIM0109E", "Property missing or empty.",
                           "Property 'grant_type' either missing or empty.")
        if grant != APIKEY_GRANT:
            # UNCONFIRMED: the real code for an unsupported grant type is not known.
            raise IAMError(400, "BXNIM0103E", "Provided grant type is not supported.",
                           "Unsupported grant_type '%s'." % grant[:80])
        if not apikey:
            raise IAMError(400, "BXNIM0109E", "Property missing or empty.",
                           "Property 'apikey' either missing or empty.")
        with self.lock:
            kid, rec = self._find_apikey(apikey)
            if rec is None or rec["revoked"]:
                raise IAMError(400, "BXNIM0415E", "Provided API key could not be found.")
            ctx.iam_id = rec["iam_id"]
            now = int(self.now())
            lifetime = int(self.cfg["token_lifetime"])
            inst = self.state["instances"].get(rec["instance"]) or \
                self.state["instances"][self.state["default_instance"]]
            header = {"kid": "kpemu-1", "alg": "HS256", "typ": "JWT"}
            payload = {
                "iam_id": rec["iam_id"], "id": rec["iam_id"], "sub": rec["iam_id"],
                "sub_type": "ServiceId" if rec["service"] else "User",
                "realmid": "iam" if rec["service"] else "IBMid",
                "identifier": kid, "jti": new_uuid(),
                "account": {"bss": inst["account"], "valid": True},
                "iat": now, "exp": now + lifetime,
                "iss": "https://iam.cloud.ibm.com/identity", "aud": "default",
                "grant_type": APIKEY_GRANT, "scope": "ibm openid", "client_id": "default",
                "acr": 1, "amr": ["pwd"],
            }
            signing_input = b64url_e(json.dumps(header, separators=(",", ":")).encode()) + \
                "." + b64url_e(json.dumps(payload, separators=(",", ":")).encode())
            token = signing_input + "." + b64url_e(self._sign(signing_input))
            return {"access_token": token, "refresh_token": secrets.token_urlsafe(48),
                    "token_type": "Bearer", "expires_in": lifetime,
                    "expiration": now + lifetime, "scope": "ibm openid"}

    def authenticate(self, headers, ctx):
        """Authorization header -> principal dict, or KPError (401 / 400)."""
        auth = headers.get("Authorization")
        if not auth:
            raise err_unauthorized()
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise err_unauthorized()
        parts = token.split(".")
        try:
            if len(parts) != 3:
                raise ValueError("not three parts")
            json.loads(b64url_d(parts[0]))
            claims = json.loads(b64url_d(parts[1]))
            signature = b64url_d(parts[2])
            if not isinstance(claims, dict) or not isinstance(claims.get("sub"), str):
                raise ValueError("no sub")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise KPError(400, "Bad Request: Bearer token could not be parsed: Please see "
                          "`reasons` for more details (BEARER_SUB_EXTRACTION_ERR)",
                          "BEARER_SUB_EXTRACTION_ERR",
                          "The subject could not be extracted from the bearer token")
        if not hmac.compare_digest(signature, self._sign(parts[0] + "." + parts[1])):
            raise err_unauthorized()
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or self.now() >= exp:
            raise err_unauthorized()
        ctx.iam_id = claims.get("iam_id")
        rec = self.state["apikeys"].get(claims.get("identifier"))
        if rec is None:
            raise err_unauthorized()
        return {"iam_id": rec["iam_id"], "access": rec["access"], "service": rec["service"],
                "instance": rec["instance"], "control": False}

    # ---- request entry points --------------------------------------------------------

    KEY_HANDLERS = ("_h_get_key", "_h_delete", "_h_purge", "_h_versions", "_h_action",
                    "_h_get_policies", "_h_put_policies", "_h_registration", "_h_list_regs")

    def route(self, method, path, query):
        """Classify a KP/IAM request without side effects.

        Returns (action_name, handler, args, key_id); action_name is the section 9 event
        name used in the request log and for the Reader/Manager decision."""
        parts = [urllib.parse.unquote(p) for p in path.split("/") if p != ""]
        if parts in (["identity", "token"], ["oidc", "token"]):
            return "iam.identity.token", None, (), None
        action, handler, args = self._route_kp(method, parts, query)
        key_id = args[0] if handler.__name__ in self.KEY_HANDLERS and args else None
        return action, handler, args, key_id

    def _route_kp(self, m, parts, query):
        if parts[:2] != ["api", "v2"]:
            return "kms.default", self._h_unknown, ()
        rest = parts[2:]
        if rest == ["keys"]:
            return {"GET": ("kms.secrets.list", self._h_list_keys, ()),
                    "HEAD": ("kms.secrets.head", self._h_head_keys, ()),
                    "POST": ("kms.secrets.create", self._h_create_key, ())}.get(
                        m, ("kms.secrets.default", self._h_bad_method, ()))
        if rest == ["keys", "registrations"]:
            if m == "GET":
                return "kms.registrations.list", self._h_list_regs, (None,)
            return "kms.registrations.default", self._h_bad_method, ()
        if len(rest) >= 2 and rest[0] == "keys":
            kid, sub = rest[1], rest[2:]
            if not sub:
                if m == "GET":
                    return "kms.secrets.read", self._h_get_key, (kid, True)
                if m == "DELETE":
                    return "kms.secrets.delete", self._h_delete, (kid,)
                if m == "POST":     # deprecated form: POST /keys/{id}?action=<name>
                    return self._action_route(kid, (query.get("action") or [""])[0])
                if m == "PATCH":
                    return "kms.secrets.patch", self._h_not_implemented, ("PATCH key",)
                return "kms.secrets.default", self._h_bad_method, ()
            if sub == ["metadata"] and m == "GET":
                return "kms.secrets-metadata.read", self._h_get_key, (kid, False)
            if sub == ["purge"] and m == "DELETE":
                return "kms.secrets.purge", self._h_purge, (kid,)
            if sub == ["restore"] and m == "POST":
                return self._action_route(kid, "restore")
            if sub == ["versions"] and m == "GET":
                return "kms.secrets-key-versions.list", self._h_versions, (kid,)
            if len(sub) == 2 and sub[0] == "actions" and m == "POST":
                return self._action_route(kid, sub[1])
            if sub == ["policies"]:
                if m == "GET":
                    return "kms.policies.read", self._h_get_policies, (kid,)
                if m == "PUT":
                    return "kms.policies.write", self._h_put_policies, (kid,)
                return "kms.policies.default", self._h_bad_method, ()
            if sub == ["registrations"]:
                if m == "GET":
                    return "kms.registrations.list", self._h_list_regs, (kid,)
                return "kms.registrations.default", self._h_not_implemented, \
                    ("registration actions",)
            if len(sub) == 2 and sub[0] == "registrations":
                table = {"GET": "kms.registrations.list", "POST": "kms.registrations.create",
                         "PUT": "kms.registrations.write", "PATCH": "kms.registrations.merge",
                         "DELETE": "kms.registrations.delete"}
                if m in table:
                    return table[m], self._h_registration, (kid, sub[1])
                return "kms.registrations.default", self._h_bad_method, ()
            if sub and sub[0] == "aliases":
                return "kms.secrets-alias.default", self._h_not_implemented, ("key aliases",)
        if rest and rest[0] in ("key_rings", "import_token", "instance", "event_ack",
                                "keys_with_policy_overrides"):
            return "kms.default", self._h_not_implemented, ("/api/v2/" + rest[0],)
        return "kms.secrets.default", self._h_unknown, ()

    def _action_route(self, kid, name):
        canonical = self._canonical_action(name)
        return (ACTION_NAMES.get(canonical, "kms.secrets.default"), self._h_action,
                (kid, canonical or name))

    def handle_kp(self, method, path, query, headers, body, ctx):
        """Run one Key Protect request through auth, access checks and its handler."""
        action, handler, args, ctx.key_id = self.route(method, path, query)
        ctx.action = action
        with self.lock:
            principal = self.authenticate(headers, ctx)
            instance = headers.get("bluemix-instance")
            if not instance or not UUID_RE.match(instance.strip()):
                # UNCONFIRMED status/code (section 10 row 3); the message is explicit.
                raise KPError(400, "Bad Request: The 'bluemix-instance' header is missing or "
                              "is not a Key Protect instance ID (UUID)", "BAD_BODY_ERR",
                              "Missing or invalid 'bluemix-instance' header",
                              {"type": "header", "name": "bluemix-instance"})
            instance = instance.strip().lower()
            ctx.instance = instance
            if principal["access"] == "none" or principal["instance"] != instance or \
                    instance not in self.state["instances"]:
                raise err_unauthorized()
            if action in REGISTRATION_WRITES and self.cfg["strict_registrations"] and \
                    not principal["service"]:
                raise KPError(403, "Forbidden: This action can only be done by a service "
                              "(service to service)", "SERVICE_ONLY_ERR",
                              "This action can only be done by a service (service to service)")
            if action not in READER_ACTIONS and principal["access"] != "manager":
                # Emulator choice: 403 with an UNAUTHORIZED_ERR reason.
                raise KPError(403, "Forbidden: The user does not have the role required for "
                              "'%s' on this instance" % action, "UNAUTHORIZED_ERR",
                              "The user does not have access to perform this action")
            req = {"method": method, "query": query, "headers": headers, "body": body,
                   "principal": principal, "instance": instance, "ctx": ctx}
            return handler(req, *args)

    @staticmethod
    def _canonical_action(name):
        if not name:
            return None
        for known in ACTION_NAMES:
            if name == known or name.lower() == known.lower():
                return known
        return None

    # ---- key helpers ------------------------------------------------------------------

    def _instance_crn(self, instance):
        inst = self.state["instances"][instance]
        return "crn:v1:bluemix:public:kms:%s:a/%s:%s::" % (inst["region"], inst["account"],
                                                          instance)

    def _key_crn(self, key):
        return self._instance_crn(key["instance"])[:-2] + ":key:" + key["id"]

    def _lookup(self, key_id, instance):
        """Key record by id within an instance (None = any instance), honouring auto-purge."""
        key = self.state["keys"].get(key_id)
        if key is None or (instance is not None and key["instance"] != instance):
            raise err_key_not_found()
        if key["state"] == 5 and self.now() >= key["deletedAt"] + self.cfg["auto_purge"]:
            del self.state["keys"][key_id]
            self._save()
            raise err_key_not_found()
        return key

    def _state(self, key):
        """Effective state: 3 once expirationDate has passed (unless destroyed)."""
        if key["state"] != 5 and key.get("expiration") is not None and \
                self.now() >= key["expiration"]:
            return 3
        return key["state"]

    def _render_key(self, key, with_payload=False):
        st = self._state(key)
        latest = key["versions"][-1]
        out = {
            "type": KEY_TYPE, "id": key["id"], "name": key["name"], "aliases": [],
            "state": st, "extractable": key["extractable"], "imported": key["imported"],
            "crn": self._key_crn(key), "keyRingID": "default",
            "creationDate": rfc3339(key["created"]), "createdBy": key["createdBy"],
            "lastUpdateDate": rfc3339(key["updated"]),
            "keyVersion": {"id": latest["id"], "creationDate": rfc3339(latest["created"])},
            "algorithmType": "AES", "algorithmBitSize": 256, "algorithmMode": "CBC_PAD",
            "algorithmMetadata": {"bitLength": "256", "mode": "CBC_PAD"},
            "dualAuthDelete": self._render_dual_auth(key),
            "deleted": key["state"] == 5,
        }
        if key.get("description"):
            out["description"] = key["description"]
        if key.get("expiration") is not None:
            out["expirationDate"] = rfc3339(key["expiration"])
        if key.get("lastRotate") is not None:
            out["lastRotateDate"] = rfc3339(key["lastRotate"])
        rot = key["policies"].get("rotation")
        if rot:
            out["rotation"] = {"enabled": rot["enabled"],
                               "interval_month": rot["interval_month"]}
        if key["state"] == 5:
            d = key["deletedAt"]
            out.update({
                "deletionDate": rfc3339(d), "deletedBy": key["deletedBy"],
                "restoreExpirationDate": rfc3339(d + self.cfg["restore_window"]),
                "restoreAllowed": self.now() < d + self.cfg["restore_window"],
                "purgeAllowed": self.now() >= d + self.cfg["purge_wait"],
                "purgeAllowedFrom": rfc3339(d + self.cfg["purge_wait"]),
                "purgeScheduledOn": rfc3339(d + self.cfg["auto_purge"]),
            })
        if with_payload and key["extractable"] and key["state"] != 5:
            out["payload"] = latest["material"]
        return out

    def _render_dual_auth(self, key):
        pol = key["policies"].get("dualAuthDelete")
        enabled = bool(pol and pol["enabled"])
        out = {"enabled": enabled}
        if enabled:
            da = key.get("dualAuth")
            valid = bool(da and self.now() < da["expires"])
            out["keySetForDeletion"] = valid
            if valid:
                out["authExpiration"] = rfc3339(da["expires"])
        return out

    def _render_registration(self, key, reg, show_metadata):
        ver = reg["keyVersion"]
        out = {"keyId": key["id"], "keyName": key["name"], "resourceCrn": reg["resourceCrn"],
               "createdBy": reg["createdBy"], "creationDate": rfc3339(reg["created"]),
               "updatedBy": reg["updatedBy"], "lastUpdated": rfc3339(reg["updated"]),
               "description": reg.get("description", ""),
               "preventKeyDeletion": reg["preventKeyDeletion"],
               "keyVersion": {"id": ver["id"], "creationDate": rfc3339(ver["created"])}}
        if show_metadata:
            out["registrationMetadata"] = reg.get("registrationMetadata", "")
        return out

    def _prefer(self, req):
        return (req["headers"].get("Prefer") or "").replace(" ", "").lower()

    @staticmethod
    def _json_body(req, allow_empty=True):
        raw = req["body"]
        if not raw.strip():
            if allow_empty:
                return None
            raise KPError(400, "Bad Request: No body was sent with the request. Please see "
                          "`reasons` for more details (NO_BODY_ERR)", "NO_BODY_ERR",
                          "No body was sent with the request")
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise err_bad_body("the body is not valid JSON")
        if not isinstance(obj, dict):
            raise err_bad_body("the body must be a JSON object")
        return obj

    @staticmethod
    def _aad(obj):
        aad = obj.get("aad") if obj else None
        if aad is None:
            return []
        if not isinstance(aad, list) or not all(isinstance(s, str) for s in aad):
            raise err_field("aad", "The field `aad` must be: an array of strings")
        if any(len(s) > 255 for s in aad):
            raise err_field("aad", "The field `aad` must be: an array of strings of at most "
                            "255 characters each")
        return aad

    @staticmethod
    def _decode_material(value, field):
        data, bad = b64decode_strict(value)
        if data is None:
            raise err_field(field, "The field `%s` must be: a base64 encoded key material: "
                            "illegal base64 data at input byte %d" % (field, bad))
        return data

    def _add_version(self, key, material):
        now = self.now()
        key["versions"].append({"id": new_uuid(), "created": now, "material": b64e(material)})
        key["updated"] = now

    # ---- operations shared by the KP API and the control API --------------------------

    def op_create_key(self, instance, principal, spec):
        """Validate a key resource from a create request and store it."""
        name = spec.get("name")
        if not isinstance(name, str) or not (2 <= len(name) <= 90):
            raise err_bad_body("`name` is required (2-90 characters)",
                               {"type": "field", "name": "name"})
        extractable = spec.get("extractable", False)
        if not isinstance(extractable, bool):
            raise err_field("extractable", "The field `extractable` must be: a boolean")
        description = spec.get("description")
        if description is not None and (not isinstance(description, str) or
                                        len(description) > 240):
            raise err_field("description", "The field `description` must be: a string of at "
                            "most 240 characters")
        expiration = None
        if spec.get("expirationDate") is not None:
            expiration = parse_rfc3339(spec["expirationDate"])
            if expiration is None:
                raise err_field("expirationDate", "The field `expirationDate` must be: an "
                                "RFC 3339 timestamp")
        imported = spec.get("payload") not in (None, "")
        if imported:
            material = self._decode_material(spec["payload"], "payload")
            if not extractable and len(material) not in (16, 24, 32):
                raise err_field("payload", "The field `payload` must be: 16, 24 or 32 bytes "
                                "of base64 encoded key material for a root key")
            if extractable and not (1 <= len(material) <= MAX_STANDARD_PAYLOAD):
                raise err_field("payload", "The field `payload` must be: at most %d bytes"
                                % MAX_STANDARD_PAYLOAD)
        else:
            material = os.urandom(32)
        now = self.now()
        kid = new_uuid()
        key = {"id": kid, "instance": instance, "name": name, "description": description,
               "extractable": extractable, "imported": imported, "state": 1,
               "expiration": expiration, "created": now, "updated": now,
               "createdBy": principal["iam_id"], "lastRotate": None, "disabledAt": None,
               "deletedAt": None, "deletedBy": None, "versions": [], "registrations": {},
               "policies": {}, "dualAuth": None}
        self._add_version(key, material)
        self.state["keys"][kid] = key
        self._save()
        return key

    def op_rotate(self, key, principal, obj, bypass=False):
        if key["extractable"]:
            raise err_root_required("rotated")
        st = self._state(key)
        if st == 5:
            raise err_deleted("rotate")
        if st not in (1, 3):
            raise err_invalid_state("active", "rotated")
        payload = (obj or {}).get("payload")
        if key["imported"] and not payload:
            raise KPError(400, "Bad Request: Key could not be rotated. Please see `reasons` "
                          "for more details.", "KEY_PAYLOAD_REQ_ERR",
                          "This root key was created with user-supplied key material: Key "
                          "material is required to perform a 'rotate' action")
        if payload and not key["imported"]:
            # Emulator choice: new material only for keys created with imported material.
            raise err_bad_body("`payload` is only accepted for keys with imported material",
                               {"type": "field", "name": "payload"})
        if not bypass and key["lastRotate"] is not None and \
                self.now() - key["lastRotate"] < self.cfg["rotate_interval"]:
            raise KPError(409, "Conflict: Action could not be performed on key. Please see "
                          "reasons for more details.", "KEY_ROTATION_NOT_PERMITTED",
                          "This root key has been rotated within the last hour. Only one "
                          "'rotate' action per hour is permitted")
        if payload:
            material = self._decode_material(payload, "payload")
            if len(material) not in (16, 24, 32):
                raise err_field("payload", "The field `payload` must be: 16, 24 or 32 bytes")
        else:
            material = os.urandom(32)
        self._add_version(key, material)
        key["lastRotate"] = self.now()
        self._save()

    def op_disable(self, key, principal):
        if key["extractable"]:
            raise err_root_required("disabled")
        if self._state(key) != 1:
            raise err_invalid_state("active", "disabled")
        key["state"] = 2
        key["disabledAt"] = key["updated"] = self.now()
        self._save()

    def op_enable(self, key, principal, bypass=False):
        if key["extractable"]:
            raise err_root_required("enabled")
        if self._state(key) != 2:
            raise err_invalid_state("suspended", "enabled")
        if not bypass and self.now() - (key["disabledAt"] or 0) < self.cfg["cooldown"]:
            raise err_too_early()
        key["state"] = 1
        key["updated"] = self.now()
        self._save()

    def op_delete(self, key, principal, force, bypass=False):
        if key["state"] == 5:
            raise KPError(410, "Gone: Key could not be deleted. Please see `reasons` for more "
                          "details.", "KEY_DELETED_ERR",
                          "Key has already been deleted. Please delete references to this key.")
        regs = key["registrations"].values()
        if any(r["preventKeyDeletion"] for r in regs):
            raise KPError(409, "Conflict: Key could not be deleted. Please see `reasons` for "
                          "more details.", "PREV_KEY_DEL_ERR",
                          "The key cannot be deleted because it's protecting a cloud resource "
                          "that has a retention policy. Before you delete this key, contact "
                          "an account owner to remove the retention policy on each resource "
                          "that is associated with the key.")
        if regs and not force:
            raise KPError(409, "Conflict: Key could not be deleted. Please see `reasons` for "
                          "more details.", "PROTECTED_RESOURCE_ERR",
                          "Key is protecting one or more cloud resources",
                          {"type": "query_param", "name": "force"})
        pol = key["policies"].get("dualAuthDelete")
        if not bypass and pol and pol["enabled"]:
            da = key.get("dualAuth")
            if not da or da["setBy"] == principal["iam_id"] or self.now() >= da["expires"]:
                raise KPError(409, "Conflict: Key could not be deleted. Please see `reasons` "
                              "for more details.", "AUTHORIZATIONS_NOT_MET",
                              "Number of authorizations required to perform this action has "
                              "not been met")
        now = self.now()
        key["preDeleteState"] = key["state"]
        key["state"] = 5
        key["deletedAt"] = key["updated"] = now
        key["deletedBy"] = principal["iam_id"]
        key["dualAuth"] = None
        self._save()

    def op_restore(self, key, principal, bypass=False):
        if key["state"] != 5:
            raise err_invalid_state("destroyed", "restored")     # UNCONFIRMED code
        age = self.now() - key["deletedAt"]
        if not bypass and age < self.cfg["cooldown"]:
            raise err_too_early()
        if not bypass and age > self.cfg["restore_window"]:
            raise KPError(400, "Bad Request: Key could not be restored. Please see `reasons` "
                          "for more details.", "KEY_RESTORE_EXPIRED",
                          "Key restoration has expired")
        if key.get("expiration") is not None and self.now() >= key["expiration"]:
            raise KPError(400, "Bad Request: Key could not be restored. Please see `reasons` "
                          "for more details.", "KEY_EXPIRED_ERR",
                          "The action could not be performed on the key because the key is "
                          "expired")
        key["state"] = 1
        key["deletedAt"] = key["deletedBy"] = None
        key["updated"] = self.now()
        self._save()

    def op_purge(self, key, principal, bypass=False):
        if key["state"] != 5:
            raise err_invalid_state("destroyed", "purged")       # UNCONFIRMED code
        if not bypass and self.now() - key["deletedAt"] < self.cfg["purge_wait"]:
            raise KPError(409, "Conflict: Key could not be purged. Please see `reasons` for "
                          "more details.", "REQ_TOO_EARLY_ERR",                 # UNCONFIRMED
                          "A key can be purged only 4 hours after it was deleted")
        del self.state["keys"][key["id"]]
        self._save()

    def op_put_registration(self, key, principal, crn, spec, mode):
        """mode: create (409 if exists) | replace (upsert) | merge (404 if missing)."""
        if not isinstance(crn, str) or not crn.startswith("crn:"):
            raise err_field("resourceCrn", "The field `resourceCrn` must be: a CRN")
        if key["extractable"]:
            raise KPError(422, "Unprocessable Entity: Registration could not be created. "
                          "Please see `reasons` for more details.", "KEY_ROOT_REQ_REG_ERR",
                          "Requested action can only be completed with a root key")
        if self._state(key) != 1:
            raise KPError(422, "Unprocessable Entity: Registration could not be created. "
                          "Please see `reasons` for more details.", "KEY_INVALID_STATE_ERR",
                          "Key is not in a valid state")
        existing = key["registrations"].get(crn)
        if mode == "create" and existing:
            raise KPError(409, "Conflict: Registration already exists. Please see `reasons` "
                          "for more details.", "REGISTRATION_ALREADY_EXISTS_ERR",  # U
                          "A registration for this key and resource already exists")
        if mode == "merge" and not existing:
            raise KPError(404, "Not Found: Registration could not be found",
                          "REGISTRATION_NOT_FOUND_ERR", "registration does not exist")  # U
        spec = spec or {}
        pkd = spec.get("preventKeyDeletion", existing["preventKeyDeletion"] if existing
                       else False)
        if not isinstance(pkd, bool):
            raise err_field("preventKeyDeletion",
                            "The field `preventKeyDeletion` must be: a boolean")
        version = key["versions"][-1] if not existing else existing["keyVersion"]
        if spec.get("keyVersionId"):
            ids = [v["id"] for v in key["versions"]]
            vid = spec["keyVersionId"]
            if vid not in ids or (existing and
                                  ids.index(vid) < ids.index(existing["keyVersion"]["id"])):
                raise KPError(422, "Unprocessable Entity: Registration could not be updated. "
                              "Please see `reasons` for more details.", "KEY_VERSION_INVALID",
                              "The key version is not valid or is older than the registered "
                              "version")
            version = key["versions"][ids.index(vid)]
        now = self.now()
        reg = existing or {"resourceCrn": crn, "created": now, "createdBy": principal["iam_id"]}
        reg.update({"updated": now, "updatedBy": principal["iam_id"],
                    "preventKeyDeletion": pkd,
                    "keyVersion": {"id": version["id"], "created": version["created"]}})
        for field in ("description", "registrationMetadata"):
            if field in spec:
                if not isinstance(spec[field], str):
                    raise err_field(field, "The field `%s` must be: a string" % field)
                reg[field] = spec[field]
        key["registrations"][crn] = reg
        self._save()
        return reg

    def op_delete_registration(self, key, crn):
        if crn not in key["registrations"]:
            raise KPError(404, "Not Found: Registration could not be found",
                          "REGISTRATION_NOT_FOUND_ERR", "registration does not exist")  # U
        del key["registrations"][crn]
        self._save()

    # ---- Key Protect handlers ------------------------------------------------------

    def _h_unknown(self, req):
        raise KPError(404, "Not Found: The requested resource was not found")

    def _h_bad_method(self, req):
        raise KPError(405, "Method Not Allowed: The method is not supported for this path")

    def _h_not_implemented(self, req, what):
        raise KPError(501, "Not Implemented: kpemu does not emulate %s" % what)

    def _h_create_key(self, req):
        obj = self._json_body(req, allow_empty=False)
        resources = obj.get("resources")
        if not isinstance(resources, list) or not resources or \
                not all(isinstance(r, dict) for r in resources):
            raise err_bad_body("`resources` must hold one key")
        meta = obj.get("metadata")
        if isinstance(meta, dict) and "collectionTotal" in meta and \
                meta["collectionTotal"] != len(resources):
            raise KPError(400, "Bad Request: Collection total does not match the number of "
                          "resources", "COLLECTION_TOTAL_MISMATCH_ERR",
                          "The value of `collectionTotal` does not match the number of "
                          "resources")
        if len(resources) != 1:
            raise err_bad_body("exactly one key can be created per request")
        key = self.op_create_key(req["instance"], req["principal"], resources[0])
        req["ctx"].key_id = key["id"]
        if "return=minimal" in self._prefer(req):
            return Resp(201)
        return Resp(201, collection(KEY_TYPE, [self._render_key(key)]))

    def _listable_keys(self, req):
        q = req["query"]
        states = [0, 1, 2, 3]
        if q.get("state"):
            try:
                states = [int(s) for s in q["state"][0].split(",")]
                if any(s not in (0, 1, 2, 3, 5) for s in states):
                    raise ValueError
            except ValueError:
                raise KPError(400, "Bad Request: Invalid query parameter `state`",
                              "INVALID_QUERY_PARAM_ERR", "state must be integers 0-5",
                              {"type": "query_param", "name": "state"})
        extractable = (q.get("extractable") or [None])[0]
        keys = []
        for key in sorted(self.state["keys"].values(), key=lambda k: k["created"]):
            if key["instance"] != req["instance"]:
                continue
            try:
                key = self._lookup(key["id"], req["instance"])
            except KPError:
                continue
            if self._state(key) not in states:
                continue
            if extractable in ("true", "false") and \
                    key["extractable"] != (extractable == "true"):
                continue
            keys.append(key)
        return keys

    @staticmethod
    def _page(req, items):
        q = req["query"]
        try:
            limit = int((q.get("limit") or ["200"])[0])
            offset = int((q.get("offset") or ["0"])[0])
            if not (0 <= limit <= 5000) or offset < 0:
                raise ValueError
        except ValueError:
            raise KPError(400, "Bad Request: Invalid `limit` or `offset` query parameter",
                          "INVALID_QUERY_PARAM_ERR", "limit must be 0-5000, offset >= 0")
        if limit == 0:
            limit = 200
        extra = {}
        if (q.get("totalCount") or ["false"])[0] == "true":
            extra["totalCount"] = len(items)
        return items[offset:offset + limit], extra

    def _h_list_keys(self, req):
        keys, extra = self._page(req, self._listable_keys(req))
        return Resp(200, collection(KEY_TYPE, [self._render_key(k) for k in keys], extra))

    def _h_head_keys(self, req):
        return Resp(200, None, {"Key-Total": str(len(self._listable_keys(req)))})

    def _h_get_key(self, req, kid, full):
        key = self._lookup(kid, req["instance"])
        with_payload = full and req["principal"]["access"] == "manager"
        return Resp(200, collection(KEY_TYPE, [self._render_key(key, with_payload)]))

    def _h_versions(self, req, kid):
        key = self._lookup(kid, req["instance"])
        all_states = (req["query"].get("allKeyStates") or ["false"])[0] == "true"
        if self._state(key) != 1 and not all_states:
            raise KPError(409, "Conflict: Key versions could not be listed: the key is not "
                          "active. Use allKeyStates=true.", "KEY_ACTION_INVALID_STATE_ERR",
                          "Key is not in a valid state")                       # code U
        versions = [{"id": v["id"], "creationDate": rfc3339(v["created"])}
                    for v in reversed(key["versions"])]
        page, extra = self._page(req, versions)
        return Resp(200, collection(VERSION_TYPE, page, extra))

    def _h_delete(self, req, kid):
        key = self._lookup(kid, req["instance"])
        force = (req["query"].get("force") or ["false"])[0].lower() == "true"
        self.op_delete(key, req["principal"], force)
        if "return=representation" in self._prefer(req):
            return Resp(200, collection(KEY_TYPE, [self._render_key(key)]))
        return Resp(204)

    def _h_purge(self, req, kid):
        key = self._lookup(kid, req["instance"])
        rendered = self._render_key(key)
        self.op_purge(key, req["principal"])
        if "return=minimal" in self._prefer(req):
            return Resp(204)
        return Resp(200, collection(KEY_TYPE, [rendered]))

    def _h_action(self, req, kid, name):
        if name not in ACTION_NAMES:
            raise KPError(400, "Bad Request: Invalid action. Please see `reasons` for more "
                          "details.", "INVALID_QUERY_PARAM_ERR",
                          "The action is not supported", {"type": "query_param",
                                                          "name": "action"})
        key = self._lookup(kid, req["instance"])
        if name in ("wrap", "unwrap", "rewrap"):
            return self._wrap_family(req, key, name)
        principal = req["principal"]
        if name == "rotate":
            self.op_rotate(key, principal, self._json_body(req))
            if "return=representation" in self._prefer(req):
                return Resp(200, collection(KEY_TYPE, [self._render_key(key)]))
            return Resp(204)
        if name == "disable":
            self.op_disable(key, principal)
            return Resp(204)
        if name == "enable":
            self.op_enable(key, principal)
            return Resp(204)
        if name == "restore":
            self.op_restore(key, principal)
            return Resp(201, collection(KEY_TYPE, [self._render_key(key)]))
        if name in ("setKeyForDeletion", "unsetKeyForDeletion"):
            pol = key["policies"].get("dualAuthDelete")
            if not (pol and pol["enabled"]):
                raise KPError(409, "Conflict: Key is not protected by a dual authorization "
                              "policy. Please see `reasons` for more details.",
                              "NOT_DUAL_AUTH_ERR", "The key does not have a dual "
                              "authorization policy")
            if self._state(key) != 1:
                raise err_invalid_state("active", "updated")
            if name == "setKeyForDeletion":
                key["dualAuth"] = {"setBy": principal["iam_id"],
                                   "expires": self.now() + self.cfg["dual_auth_window"]}
            else:
                key["dualAuth"] = None
            self._save()
            return Resp(204)
        if name == "sync":
            return Resp(204)
        raise AssertionError(name)

    def _wrap_family(self, req, key, name):
        if key["extractable"]:
            raise err_root_required(name + "ped")
        st = self._state(key)
        if st == 5:
            raise err_deleted(name)
        allowed = (1,) if name == "wrap" else (1, 3)
        if st not in allowed:
            raise err_invalid_state("active", name + "ped")
        latest = key["versions"][-1]
        if name == "wrap":
            obj = self._json_body(req)
            aad = self._aad(obj)
            generated = not (obj and obj.get("plaintext"))
            if generated:
                plaintext = os.urandom(DEK_BYTES)
            else:
                plaintext = self._decode_material(obj["plaintext"], "plaintext")
                if len(plaintext) > MAX_PLAINTEXT_BYTES:
                    raise err_field("plaintext", "The field `plaintext` must be: at most %d "
                                    "bytes" % MAX_PLAINTEXT_BYTES)
            out = {"ciphertext": seal(base64.b64decode(latest["material"]), key["id"],
                                      latest["id"], aad, plaintext),
                   "keyVersion": {"id": latest["id"],
                                  "creationDate": rfc3339(latest["created"])}}
            if generated:
                out["plaintext"] = b64e(plaintext)
            return Resp(200, out)
        obj = self._json_body(req, allow_empty=False)
        if "ciphertext" not in obj:
            raise KPError(400, "Bad Request: No ciphertext was sent with the request. Please "
                          "see `reasons` for more details (NO_BODY_ERR)", "NO_BODY_ERR",
                          "The body must contain the `ciphertext` field")
        aad = self._aad(obj)
        parsed = parse_envelope(obj["ciphertext"]) \
            if isinstance(obj["ciphertext"], str) else None
        if parsed is None:
            _, bad = b64decode_strict(obj["ciphertext"])
            detail = ("illegal base64 data at input byte %d" % bad) if bad is not None \
                else "not a Key Protect ciphertext"
            raise err_field("ciphertext", "The field 'ciphertext' must be: the original base64 "
                            "encoded ciphertext from the wrap operation: " + detail)
        handle, iv, inner = parsed
        version = next((v for v in key["versions"] if v["id"] == handle), None)
        plaintext = None
        if version is not None:
            plaintext = unseal(base64.b64decode(version["material"]), key["id"], handle, aad,
                               iv, inner)
        if plaintext is None:
            raise KPError(422, "Unprocessable Entity: Invalid ciphertext. Please see "
                          "`reasons` for more details.", "UNPROCESSABLE_CIPHERTEXT_ERR",
                          "The provided ciphertext is invalid or corrupted")
        used = {"id": version["id"], "creationDate": rfc3339(version["created"])}
        latest_ref = {"id": latest["id"], "creationDate": rfc3339(latest["created"])}
        fresh = lambda: seal(base64.b64decode(latest["material"]), key["id"], latest["id"],
                             aad, plaintext)
        if name == "rewrap":
            return Resp(200, {"ciphertext": fresh(), "keyVersion": used,
                              "rewrappedKeyVersion": latest_ref})
        out = {"plaintext": b64e(plaintext), "keyVersion": used}
        if version["id"] != latest["id"]:
            out["ciphertext"] = fresh()
            out["rewrappedKeyVersion"] = latest_ref
        return Resp(200, out)

    def _policy_resources(self, key, which):
        out = []
        for name in ("rotation", "dualAuthDelete"):
            pol = key["policies"].get(name)
            if pol is None or (which and which != name):
                continue
            res = {"id": pol["id"], "type": POLICY_TYPE,
                   "crn": self._instance_crn(key["instance"])[:-2] + ":policy:" + pol["id"],
                   "createdBy": pol["createdBy"], "creationDate": rfc3339(pol["created"]),
                   "updatedBy": pol["updatedBy"], "lastUpdateDate": rfc3339(pol["updated"])}
            if name == "rotation":
                res["rotation"] = {"enabled": pol["enabled"],
                                   "interval_month": pol["interval_month"]}
            else:
                res["dualAuthDelete"] = {"enabled": pol["enabled"]}
            out.append(res)
        return out

    def _h_get_policies(self, req, kid):
        key = self._lookup(kid, req["instance"])
        which = (req["query"].get("policy") or [None])[0]
        return Resp(200, collection(POLICY_TYPE, self._policy_resources(key, which)))

    def _h_put_policies(self, req, kid):
        key = self._lookup(kid, req["instance"])
        which = (req["query"].get("policy") or [None])[0]
        obj = self._json_body(req, allow_empty=False)
        resources = obj.get("resources")
        if not isinstance(resources, list) or not resources or \
                not all(isinstance(r, dict) for r in resources):
            raise err_bad_body("`resources` must hold policies")
        now = self.now()
        for res in resources:
            for name in ("rotation", "dualAuthDelete"):
                if name not in res:
                    continue
                if which and which != name:
                    raise KPError(400, "Bad Request: The body does not match the `policy` "
                                  "query parameter", "BODY_QUERY_PARAM_MISMATCH_ERR",
                                  "The policy in the body does not match the query parameter")
                val = res[name]
                if not isinstance(val, dict) or not isinstance(val.get("enabled", True), bool):
                    raise err_field(name, "The field `%s` must be: an object" % name)
                pol = key["policies"].get(name) or {"id": new_uuid(), "created": now,
                                                    "createdBy": req["principal"]["iam_id"]}
                pol.update({"updated": now, "updatedBy": req["principal"]["iam_id"],
                            "enabled": val.get("enabled", True)})
                if name == "rotation":
                    if key["extractable"]:
                        raise err_root_required("given a rotation policy")
                    months = val.get("interval_month")
                    if not isinstance(months, int) or not (1 <= months <= 12):
                        raise err_field("interval_month", "The field `interval_month` must "
                                        "be: an integer from 1 to 12")
                    pol["interval_month"] = months
                elif not pol["enabled"]:
                    key["dualAuth"] = None
                key["policies"][name] = pol
        self._save()
        return Resp(200, collection(POLICY_TYPE, self._policy_resources(key, which)))

    @staticmethod
    def _crn_matcher(pattern):
        if not pattern:
            return lambda crn: True
        rx = re.compile("^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$")
        return lambda crn: bool(rx.match(crn))

    def _h_list_regs(self, req, kid):
        q = req["query"]
        match = self._crn_matcher((q.get("urlEncodedResourceCRNQuery") or [None])[0])
        pkd = (q.get("preventKeyDeletion") or [None])[0]
        keys = [self._lookup(kid, req["instance"])] if kid else \
            [k for k in self.state["keys"].values() if k["instance"] == req["instance"]]
        show_meta = req["principal"]["service"]
        regs = []
        for key in keys:
            for reg in key["registrations"].values():
                if not match(reg["resourceCrn"]):
                    continue
                if pkd in ("true", "false") and reg["preventKeyDeletion"] != (pkd == "true"):
                    continue
                regs.append(self._render_registration(key, reg, show_meta))
        page, extra = self._page(req, regs)
        return Resp(200, collection(REGISTRATION_TYPE, page, extra))

    def _h_registration(self, req, kid, crn):
        key = self._lookup(kid, req["instance"])
        method = req["method"]
        show_meta = req["principal"]["service"]
        if method == "GET":
            reg = key["registrations"].get(crn)
            if reg is None:
                raise KPError(404, "Not Found: Registration could not be found",
                              "REGISTRATION_NOT_FOUND_ERR", "registration does not exist")
            return Resp(200, collection(REGISTRATION_TYPE,
                                        [self._render_registration(key, reg, show_meta)]))
        if method == "DELETE":
            self.op_delete_registration(key, crn)
            return Resp(204)
        obj = self._json_body(req)
        spec = {}
        if obj is not None:
            res = obj.get("resources")
            if not isinstance(res, list) or len(res) != 1 or not isinstance(res[0], dict):
                raise err_bad_body("`resources` must hold one registration")
            spec = res[0]
        mode = {"POST": "create", "PUT": "replace", "PATCH": "merge"}[method]
        reg = self.op_put_registration(key, req["principal"], crn, spec, mode)
        return Resp(201 if method == "POST" else 200,
                    collection(REGISTRATION_TYPE,
                               [self._render_registration(key, reg, show_meta)]))

    # ---- faults and the request log ---------------------------------------------------

    def add_fault(self, spec):
        kind = spec.get("kind")
        if kind not in FAULT_KINDS:
            raise KPError(400, "Bad Request: fault kind must be one of " + ", ".join(FAULT_KINDS))
        try:
            count = int(spec.get("count", 1))
            status = int(spec["status"]) if spec.get("status") is not None else None
            delay = float(spec["delay"]) if spec.get("delay") is not None else None
        except (TypeError, ValueError):
            raise KPError(400, "Bad Request: count/status must be integers, delay a number")
        if count < 1:
            raise KPError(400, "Bad Request: count must be >= 1")
        if status is not None and not (100 <= status <= 599):
            raise KPError(400, "Bad Request: status must be an HTTP status code")
        mutate = spec.get("mutate")
        if kind == "answer" and mutate not in ANSWER_MUTATIONS:
            raise KPError(400, "Bad Request: an answer fault needs mutate, one of " +
                          ", ".join(ANSWER_MUTATIONS))
        with self.lock:
            self.fault_seq += 1
            fault = {"id": self.fault_seq, "kind": kind, "remaining": count, "status": status,
                     "retry_after": spec.get("retry_after"), "delay": delay,
                     "path_contains": spec.get("path_contains") or None,
                     "body": spec.get("body"), "mutate": mutate}
            self.faults.append(fault)
            return dict(fault)

    def take_fault(self, path):
        with self.lock:
            for fault in self.faults:
                pc = fault["path_contains"]
                if pc and pc not in path:
                    continue
                fault["remaining"] -= 1
                if fault["remaining"] <= 0:
                    self.faults.remove(fault)
                return dict(fault)
        return None

    def record(self, entry):
        """Append one request-log entry (memory + STATE_DIR/requests.log). No secrets."""
        with self.lock:
            self.log_seq += 1
            entry["seq"] = self.log_seq
            self.log.append(entry)
            try:
                with open(os.path.join(self.state_dir, "requests.log"), "a") as f:
                    f.write(json.dumps(entry, sort_keys=True) + "\n")
            except OSError:
                pass

    # ---- control API (/_emu/...) ------------------------------------------------------

    def _control_key_view(self, key):
        out = self._render_key(key)
        out["instance_id"] = key["instance"]
        out["versions"] = [{"id": v["id"], "creationDate": rfc3339(v["created"])}
                           for v in reversed(key["versions"])]
        out["registrations"] = [self._render_registration(key, r, True)
                                for r in key["registrations"].values()]
        return out

    def control(self, method, path, query, body):
        parts = [urllib.parse.unquote(p) for p in path.split("/") if p][1:]
        try:
            obj = json.loads(body.decode("utf-8")) if body.strip() else {}
        except (UnicodeDecodeError, ValueError):
            raise KPError(400, "Bad Request: control body must be JSON")
        if not isinstance(obj, dict):
            raise KPError(400, "Bad Request: control body must be a JSON object")
        with self.lock:
            return self._control(method, parts, query, obj)

    def _control(self, method, parts, query, obj):
        P = CONTROL_PRINCIPAL
        if parts == ["info"] and method == "GET":
            return Resp(200, dict(self.info, config=self.cfg, now=rfc3339(self.now()),
                                  instances=sorted(self.state["instances"])))
        if parts == ["config"]:
            if method == "POST":
                for k, v in obj.items():
                    if k not in DEFAULTS:
                        raise KPError(400, "Bad Request: unknown config item %r" % k)
                    self.cfg[k] = bool(v) if k == "strict_registrations" else float(v)
            return Resp(200, self.cfg)
        if parts == ["instances"] and method == "POST":
            guid = new_uuid()
            self.state["instances"][guid] = {"account": obj.get("account") or
                                             secrets.token_hex(16),
                                             "region": self.region, "created": self.now()}
            self._save()
            return Resp(201, {"instance_id": guid,
                              "account": self.state["instances"][guid]["account"],
                              "crn": self._instance_crn(guid)})
        if parts == ["keys"]:
            if method == "GET":
                inst = (query.get("instance") or [None])[0]
                return Resp(200, [self._control_key_view(k)
                                  for k in sorted(self.state["keys"].values(),
                                                  key=lambda k: k["created"])
                                  if inst in (None, k["instance"])])
            if method == "POST":
                inst = obj.get("instance") or self.state["default_instance"]
                if inst not in self.state["instances"]:
                    raise KPError(404, "Not Found: unknown instance %s" % inst)
                spec = {"name": obj.get("name") or "kpemu-key-" + secrets.token_hex(4),
                        "extractable": bool(obj.get("standard") or obj.get("extractable")),
                        "payload": obj.get("payload"), "description": obj.get("description"),
                        "expirationDate": obj.get("expirationDate")}
                if obj.get("expiresIn") is not None:
                    spec["expirationDate"] = rfc3339(self.now() + float(obj["expiresIn"]))
                key = self.op_create_key(inst, P, spec)
                return Resp(201, self._control_key_view(key))
        if len(parts) >= 2 and parts[0] == "keys":
            key = self._lookup(parts[1], None)
            sub = parts[2:]
            if not sub and method == "GET":
                return Resp(200, self._control_key_view(key))
            if len(sub) == 1 and method == "POST":
                op = sub[0]
                if op == "rotate":
                    self.op_rotate(key, P, obj, bypass=True)
                elif op == "disable":
                    self.op_disable(key, P)
                elif op == "enable":
                    self.op_enable(key, P, bypass=True)
                elif op == "delete":
                    self.op_delete(key, P, bool(obj.get("force")), bypass=True)
                elif op == "restore":
                    self.op_restore(key, P, bypass=True)
                elif op == "purge":
                    view = self._control_key_view(key)
                    self.op_purge(key, P, bypass=True)
                    view["purged"] = True
                    return Resp(200, view)
                elif op == "registrations":
                    self.op_put_registration(key, P, obj.get("resourceCrn"), obj, "replace")
                    return Resp(201, self._control_key_view(key))
                else:
                    raise KPError(404, "Not Found: unknown control operation %r" % op)
                return Resp(200, self._control_key_view(key))
            if sub == ["registrations"] and method == "GET":
                return Resp(200, [self._render_registration(key, r, True)
                                  for r in key["registrations"].values()])
            if sub == ["registrations", "delete"] and method == "POST":
                self.op_delete_registration(key, obj.get("resourceCrn"))
                return Resp(200, self._control_key_view(key))
        if parts == ["apikeys"] and method == "POST":
            access = obj.get("access") or "manager"
            if access not in ACCESS_LEVELS:
                raise KPError(400, "Bad Request: access must be one of manager, reader, none")
            inst = obj.get("instance") or self.state["default_instance"]
            if not UUID_RE.match(inst):
                raise KPError(400, "Bad Request: instance must be a GUID")
            return Resp(201, self._new_apikey(access, inst.lower(), bool(obj.get("service")),
                                              obj.get("name")))
        if parts in (["apikeys", "revoke"], ["apikeys", "access"]) and method == "POST":
            kid, rec = self._find_apikey(str(obj.get("apikey") or ""))
            if rec is None:
                raise KPError(404, "Not Found: unknown API key")
            if parts[1] == "revoke":
                rec["revoked"] = True
            else:
                if obj.get("access") not in ACCESS_LEVELS:
                    raise KPError(400, "Bad Request: access must be manager, reader or none")
                rec["access"] = obj["access"]
            self._save()
            return Resp(200, {"id": kid, "iam_id": rec["iam_id"], "access": rec["access"],
                              "instance_id": rec["instance"], "revoked": rec["revoked"],
                              "service": rec["service"]})
        if parts == ["faults"]:
            if method == "GET":
                return Resp(200, [dict(f) for f in self.faults])
            if method == "POST":
                return Resp(201, self.add_fault(obj))
            if method == "DELETE":
                self.faults.clear()
                return Resp(200, [])
        if parts == ["faults", "clear"] and method == "POST":
            self.faults.clear()
            return Resp(200, [])
        if parts == ["clock"] and method == "GET":
            return self._clock_view()
        if parts == ["clock", "advance"] and method == "POST":
            try:
                seconds = float(obj.get("seconds"))
            except (TypeError, ValueError):
                raise KPError(400, "Bad Request: `seconds` must be a number")
            self.state["clock_offset"] += seconds
            self._save()
            return self._clock_view()
        if parts == ["log"]:
            if method == "GET":
                return Resp(200, list(self.log))
            if method == "DELETE":
                self.log.clear()
                return Resp(200, [])
        if parts == ["log", "reset"] and method == "POST":
            self.log.clear()
            return Resp(200, [])
        raise KPError(404, "Not Found: unknown control endpoint %s /_emu/%s"
                      % (method, "/".join(parts)))

    def _clock_view(self):
        now = self.now()
        return Resp(200, {"now": now, "now_rfc3339": rfc3339(now),
                          "offset": self.state["clock_offset"]})


# --------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kpemu/1.0"
    timeout = 300          # idle keep-alive connections

    def version_string(self):
        return self.server_version

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("kpemu: %s\n" % (fmt % args))

    def _read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _dispatch(self):
        emu = self.server.emu
        started = time.monotonic()
        ctx = Ctx()
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        cid = (self.headers.get("correlation-id") or "").strip() or new_uuid()
        split = urllib.parse.urlsplit(self.path)
        path, query = split.path, urllib.parse.parse_qs(split.query, keep_blank_values=True)
        if path.startswith("/_emu/") or path == "/_emu":
            try:
                resp = emu.control(self.command, path, query, body)
            except KPError as e:
                resp = e.resp()
            self._send(resp, cid)
            return
        iam = path.rstrip("/") in ("/identity/token", "/oidc/token")
        logged_path = path if iam else self.path     # IAM: never log a query string
        if not iam:
            ctx.action, _, _, ctx.key_id = emu.route(self.command, path, query)
        else:
            ctx.action = "iam.identity.token"
        fault = emu.take_fault(self.path)
        resp = None
        post_fault = None
        if fault:
            ctx.fault = fault["kind"]
            if fault["kind"] in ("answer", "lost_answer"):
                post_fault = fault          # serve the request first, then spoil its answer
            else:
                resp = self._apply_fault(fault)
        if resp is None:
            try:
                if iam:
                    resp = self._iam(emu, body, ctx)
                else:
                    resp = emu.handle_kp(self.command, path, query, self.headers, body, ctx)
            except KPError as e:
                resp = e.resp()
            except Exception:                                  # noqa: BLE001
                traceback.print_exc()
                resp = KPError(500, "Internal Server Error: kpemu failed; see its stderr").resp()
        if post_fault is not None:
            resp = self._spoil_answer(post_fault, resp)
        status = None
        if resp.drop_connection:
            self.close_connection = True
        else:
            self._send(resp, cid)
            status = resp.status
        emu.record({"time": rfc3339(emu.now()), "unix": round(emu.now(), 3),
                    "method": self.command, "path": logged_path, "status": status,
                    "correlation_id": cid, "action": ctx.action, "instance": ctx.instance,
                    "key_id": ctx.key_id, "iam_id": ctx.iam_id, "fault": ctx.fault,
                    "duration_ms": round((time.monotonic() - started) * 1000, 1)})

    def _iam(self, emu, body, ctx):
        if self.command != "POST":
            return Resp(405, {"errorCode": "BXNIM0105E", "errorMessage": "Method not allowed."})
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        try:
            return Resp(200, emu.iam_token(form, ctx))
        except IAMError as e:
            now = rfc3339(emu.now())
            err = {"errorCode": e.code, "errorMessage": e.message,
                   "context": {"requestId": new_uuid(), "requestType": "incoming.Identity_Token",
                               "userAgent": self.headers.get("User-Agent", ""),
                               "url": "https://iam.cloud.ibm.com", "instanceId": "kpemu",
                               "threadId": str(threading.get_ident()), "host": "kpemu",
                               "startTime": now, "endTime": now, "elapsedTime": "0",
                               "locale": "en_US", "clusterName": "kpemu"}}
            if e.details:
                err["errorDetails"] = e.details
            return Resp(e.status, err)

    def _apply_fault(self, fault):
        kind = fault["kind"]
        if kind == "latency":
            time.sleep(fault["delay"] if fault["delay"] is not None else 1.0)
            return None
        if kind == "timeout":
            time.sleep(fault["delay"] if fault["delay"] is not None else 30.0)
            resp = Resp(0)
            resp.drop_connection = True
            return resp
        if fault["delay"]:
            time.sleep(fault["delay"])
        headers = {}
        if fault["retry_after"] is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        if kind == "status":
            status = fault["status"] or 503
            body = fault["body"] if fault["body"] is not None else collection(
                ERROR_TYPE, [{"errorMsg": "%s: injected fault (kpemu)" % phrase(status)}])
            return Resp(status, body, headers)
        if kind == "malformed":
            body = fault["body"] if fault["body"] is not None else \
                '{"metadata": {"collectionType": "application/vnd.ibm.kms.key+json", ' \
                '"collectionTotal": 1}, "resources": [{"id": '
            return Resp(fault["status"] or 200, body, headers)
        status = fault["status"] or 502
        body = fault["body"] if fault["body"] is not None else \
            "%d %s: upstream connect error (injected by kpemu)\n" % (status, phrase(status))
        return Resp(status, body, headers, content_type="text/plain; charset=utf-8")

    @staticmethod
    def _spoil_answer(fault, resp):
        """After the request was served (and acted on): lose or corrupt its answer."""
        if fault["kind"] == "lost_answer":
            # the action happened; the client never learns it
            if fault["status"]:
                return Resp(fault["status"], collection(ERROR_TYPE, [
                    {"errorMsg": "%s: injected fault after the action (kpemu)" %
                     phrase(fault["status"])}]))
            lost = Resp(0)
            lost.drop_connection = True
            return lost
        if not isinstance(resp.body, dict) or resp.status != 200:
            return resp
        body = dict(resp.body)
        mutate = fault["mutate"]
        if mutate == "truncated":
            text = json.dumps(body)
            return Resp(resp.status, text[:len(text) // 2], resp.headers)
        if mutate == "garbage_b64":
            body["ciphertext"] = b64e(os.urandom(96))
        elif mutate == "object":
            body["ciphertext"] = {"ciphertext": body.get("ciphertext"), "note": "not a string"}
        elif mutate == "number":
            body["ciphertext"] = 12345
        elif mutate == "huge":
            body["ciphertext"] = "A" * HUGE_CIPHERTEXT_BYTES
        return Resp(resp.status, body, resp.headers)

    def _send(self, resp, cid):
        payload = resp.payload()
        try:
            self.send_response(resp.status, phrase(resp.status))
            self.send_header("correlation-id", cid)
            if payload or resp.status not in (204, 304):
                self.send_header("Content-Type", resp.content_type)
            for name, value in resp.headers.items():
                self.send_header(name, value)
            if resp.status != 204:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD" and resp.status != 204:
                self.wfile.write(payload)
            self.wfile.flush()
        except (ConnectionError, ssl.SSLError, OSError):
            self.close_connection = True


class EmuServer(ThreadingHTTPServer):
    """Threaded server; the TLS handshake runs in the request thread, not in accept()."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, addr, emu, ssl_ctx, verbose=False):
        self.emu = emu
        self.ssl_ctx = ssl_ctx
        self.verbose = verbose
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        if self.ssl_ctx is None:
            return super().finish_request(request, client_address)
        request.settimeout(15)
        try:
            conn = self.ssl_ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return      # e.g. the client rejected our certificate
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout, TimeoutError)):
            return
        super().handle_error(request, client_address)


# --------------------------------------------------------------------------------------
# TLS material (openssl CLI)
# --------------------------------------------------------------------------------------

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = placeholder
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
"""


def _openssl(*args):
    proc = subprocess.run(["openssl"] + list(args), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise SystemExit("kpemu: openssl %s failed:\n%s" %
                         (args[0], proc.stderr.decode(errors="replace")))


def make_ca(directory, name="ca", cn="kpemu test CA"):
    """Create DIR/<name>.crt and DIR/<name>.key (EC P-256, 10 years). Returns the cert path."""
    crt, key = (os.path.join(directory, name + ext) for ext in (".crt", ".key"))
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        cnf = os.path.join(tmp, "openssl.cnf")
        with open(cnf, "w") as f:
            f.write(_OPENSSL_CNF)
        _openssl("req", "-x509", "-new", "-config", cnf, "-extensions", "v3_ca",
                 "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", os.path.join(tmp, "k"), "-out", os.path.join(tmp, "c"),
                 "-days", "3650", "-subj", "/O=byok tests/CN=" + cn)
        os.chmod(os.path.join(tmp, "k"), 0o600)
        os.replace(os.path.join(tmp, "k"), key)
        os.replace(os.path.join(tmp, "c"), crt)
    return crt


def ensure_tls(state_dir):
    """Create (or reuse) ca.crt/ca.key and server.crt/server.key in the state dir."""
    p = lambda n: os.path.join(state_dir, n)
    if all(os.path.exists(p(n)) for n in ("ca.crt", "server.crt", "server.key")):
        return p("ca.crt"), p("server.crt"), p("server.key")
    if not (os.path.exists(p("ca.crt")) and os.path.exists(p("ca.key"))):
        make_ca(state_dir)
    with tempfile.TemporaryDirectory(dir=state_dir) as tmp:
        cnf = os.path.join(tmp, "openssl.cnf")
        with open(cnf, "w") as f:
            f.write(_OPENSSL_CNF)
        csr, key, crt = (os.path.join(tmp, n) for n in ("csr", "key", "crt"))
        _openssl("req", "-new", "-config", cnf, "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr,
                 "-subj", "/O=byok tests/CN=localhost")
        _openssl("x509", "-req", "-in", csr, "-CA", p("ca.crt"), "-CAkey", p("ca.key"),
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", "825",
                 "-extfile", cnf, "-extensions", "v3_server", "-out", crt)
        os.chmod(key, 0o600)
        os.replace(key, p("server.key"))
        os.replace(crt, p("server.crt"))
    return p("ca.crt"), p("server.crt"), p("server.key")


# --------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------

def cmd_serve(args):
    state_dir = os.path.abspath(args.state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    info_path = os.path.join(state_dir, "emulator.json")
    try:
        os.unlink(info_path)          # never leave a stale file from a previous run
    except FileNotFoundError:
        pass
    config = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    emu = Emulator(state_dir, config, region=args.region)
    ssl_ctx = None
    ca_file = None
    if not args.http:
        ca_file, crt, key = ensure_tls(state_dir)
        ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_ctx.load_cert_chain(crt, key)
    server = EmuServer(("127.0.0.1", args.port), emu, ssl_ctx, args.verbose)
    port = server.server_address[1]
    scheme = "http" if args.http else "https"
    inst = emu.state["default_instance"]
    emu.info = {
        "url": "%s://127.0.0.1:%d" % (scheme, port), "port": port, "ca_file": ca_file,
        "pid": os.getpid(), "instance_id": inst, "region": args.region,
        "account": emu.state["instances"][inst]["account"],
        "instance_crn": emu._instance_crn(inst),
        "apikey_file": os.path.join(state_dir, "apikey"), "state_dir": state_dir,
        "scheme": scheme,
    }
    atomic_write(info_path, json.dumps(emu.info, indent=2, sort_keys=True) + "\n", 0o644)

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print("kpemu: listening on %s (state %s)" % (emu.info["url"], state_dir), flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        try:
            with open(info_path) as f:
                if json.load(f).get("pid") == os.getpid():
                    os.unlink(info_path)
        except (OSError, ValueError):
            pass
    print("kpemu: stopped", flush=True)
    return 0


# --------------------------------------------------------------------------------------
# ctl: client for the control API
# --------------------------------------------------------------------------------------

def die(message):
    """ctl failures that are not HTTP errors: message on stderr, exit status 2."""
    sys.stderr.write("kpemu ctl: %s\n" % message)
    sys.exit(2)


def _read_info(state_dir):
    path = os.path.join(state_dir, "emulator.json")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        die("no running emulator (cannot read %s)" % path)


def _http(info, method, path, body=None, headers=None, form=False, timeout=60):
    """One request to the emulator with certificate verification. Returns (status, bytes)."""
    url = info["url"] + path
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if form:
            data = urllib.parse.urlencode(body).encode()
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            data = json.dumps(body).encode()
            hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    ctx = ssl.create_default_context(cafile=info["ca_file"]) if info.get("ca_file") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        die("request to %s failed: %s" % (url, e))


def _pick(obj, field):
    for part in field.split("."):
        try:
            obj = obj[int(part)] if isinstance(obj, list) else obj[part]
        except (ValueError, IndexError, KeyError, TypeError):
            die("field %r not in response" % field)
    return obj


def _ctl_request(args):
    """Map a ctl command to (method, control path, body)."""
    c = args.command
    q = urllib.parse.quote
    if c == "info":
        return "GET", "/_emu/info", None
    if c == "create-key":
        body = {"name": args.name, "standard": args.standard, "instance": args.instance,
                "payload": args.payload, "description": args.description,
                "expirationDate": args.expiration, "expiresIn": args.expires_in}
        return "POST", "/_emu/keys", {k: v for k, v in body.items() if v is not None}
    if c == "keys":
        return "GET", "/_emu/keys" + ("?instance=" + q(args.instance) if args.instance
                                      else ""), None
    if c == "key":
        return "GET", "/_emu/keys/" + q(args.key_id, safe=""), None
    if c in ("rotate", "disable", "enable", "delete", "restore", "purge"):
        body = {}
        if c == "delete":
            body["force"] = args.force
        if c == "rotate" and args.payload:
            body["payload"] = args.payload
        return "POST", "/_emu/keys/%s/%s" % (q(args.key_id, safe=""), c), body
    if c == "registrations":
        return "GET", "/_emu/keys/%s/registrations" % q(args.key_id, safe=""), None
    if c == "add-registration":
        body = {"resourceCrn": args.resource_crn, "preventKeyDeletion": args.prevent_deletion}
        if args.description is not None:
            body["description"] = args.description
        if args.metadata is not None:
            body["registrationMetadata"] = args.metadata
        return "POST", "/_emu/keys/%s/registrations" % q(args.key_id, safe=""), body
    if c == "delete-registration":
        return "POST", "/_emu/keys/%s/registrations/delete" % q(args.key_id, safe=""), \
            {"resourceCrn": args.resource_crn}
    if c == "add-apikey":
        body = {"access": args.access, "service": args.service}
        if args.instance:
            body["instance"] = args.instance
        return "POST", "/_emu/apikeys", body
    if c == "revoke-apikey":
        return "POST", "/_emu/apikeys/revoke", {"apikey": args.apikey}
    if c == "set-access":
        return "POST", "/_emu/apikeys/access", {"apikey": args.apikey, "access": args.access}
    if c == "create-instance":
        return "POST", "/_emu/instances", {}
    if c == "fault":
        body = {"kind": args.kind, "count": args.count, "status": args.status,
                "retry_after": args.retry_after, "delay": args.delay,
                "path_contains": args.path_contains, "body": args.body, "mutate": args.mutate}
        return "POST", "/_emu/faults", {k: v for k, v in body.items() if v is not None}
    if c == "faults":
        return "GET", "/_emu/faults", None
    if c == "clear-faults":
        return "DELETE", "/_emu/faults", None
    if c == "advance-clock":
        return "POST", "/_emu/clock/advance", {"seconds": args.seconds}
    if c == "clock":
        return "GET", "/_emu/clock", None
    if c == "config":
        body = {}
        for k in ("token_lifetime", "rotate_interval", "cooldown", "restore_window",
                  "purge_wait", "auto_purge", "dual_auth_window"):
            if getattr(args, k) is not None:
                body[k] = getattr(args, k)
        if args.strict_registrations is not None:
            body["strict_registrations"] = args.strict_registrations == "on"
        return ("POST" if body else "GET"), "/_emu/config", body or None
    if c == "log":
        return "GET", "/_emu/log", None
    if c == "reset-log":
        return "DELETE", "/_emu/log", None
    die("unknown command %s" % c)


def cmd_ctl(args):
    state_dir = args.state_dir_sub or args.state_dir or os.environ.get("KPEMU_STATE_DIR")
    if not state_dir:
        die("--state-dir is required (or set KPEMU_STATE_DIR)")
    info = _read_info(state_dir)
    field = args.field_sub or args.field
    if args.command == "token":
        apikey = args.apikey
        if apikey is None:
            with open(os.path.join(state_dir, "apikey")) as f:
                apikey = f.read().strip()
        status, raw = _http(info, "POST", "/identity/token",
                            {"grant_type": APIKEY_GRANT, "apikey": apikey}, form=True)
    else:
        method, path, body = _ctl_request(args)
        status, raw = _http(info, method, path, body)
    try:
        result = json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        result = raw.decode("utf-8", "replace")
    ok = 200 <= status < 300
    if field and ok:
        value = _pick(result, field)
        print(value if isinstance(value, str) else json.dumps(value))
    elif ok:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
        sys.stderr.write("kpemu ctl: HTTP %d\n" % status)
    return 0 if ok else 1


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------

def build_parser():
    ap = argparse.ArgumentParser(prog="kpemu.py", description=__doc__.split("\n")[0])
    cmds = ap.add_subparsers(dest="mode", required=True)

    s = cmds.add_parser("serve", help="run the emulator")
    s.add_argument("--state-dir", required=True)
    s.add_argument("--port", type=int, default=0, help="0 = pick a free port (default)")
    s.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    s.add_argument("--region", default="us-south")
    s.add_argument("--token-lifetime", type=float, dest="token_lifetime")
    s.add_argument("--rotate-interval", type=float, dest="rotate_interval")
    s.add_argument("--cooldown", type=float)
    s.add_argument("--restore-window", type=float, dest="restore_window")
    s.add_argument("--purge-wait", type=float, dest="purge_wait")
    s.add_argument("--auto-purge", type=float, dest="auto_purge")
    s.add_argument("--dual-auth-window", type=float, dest="dual_auth_window")
    s.add_argument("--strict-registrations", action="store_const", const=True,
                   dest="strict_registrations",
                   help="registration writes need a service API key (403 SERVICE_ONLY_ERR)")
    s.add_argument("--verbose", action="store_true", help="access log on stderr")
    s.set_defaults(func=cmd_serve)

    c = cmds.add_parser("ctl", help="talk to a running emulator's control API")
    c.add_argument("--state-dir", dest="state_dir")
    c.add_argument("--field", help="print only this (dotted) field of the JSON result")
    c.set_defaults(func=cmd_ctl)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", dest="state_dir_sub")
    common.add_argument("--field", dest="field_sub")
    sub = c.add_subparsers(dest="command", required=True)

    def add(name, help_text):
        return sub.add_parser(name, parents=[common], help=help_text)

    add("info", "emulator.json plus live config")
    p = add("create-key", "create a root key (or --standard) and print it")
    p.add_argument("--name")
    p.add_argument("--standard", action="store_true")
    p.add_argument("--instance")
    p.add_argument("--payload", help="base64 key material (imported key)")
    p.add_argument("--description")
    p.add_argument("--expiration", help="expirationDate, RFC 3339")
    p.add_argument("--expires-in", type=float, dest="expires_in",
                   help="expirationDate = emulator now + SECONDS")
    p = add("keys", "list all keys")
    p.add_argument("--instance")
    for name in ("key", "rotate", "disable", "enable", "delete", "restore", "purge",
                 "registrations"):
        p = add(name, "%s KEYID" % name)
        p.add_argument("key_id", metavar="KEYID")
        if name == "delete":
            p.add_argument("--force", action="store_true")
        if name == "rotate":
            p.add_argument("--payload")
    p = add("add-registration", "register a resource CRN with a key")
    p.add_argument("key_id", metavar="KEYID")
    p.add_argument("--resource-crn", required=True)
    p.add_argument("--description")
    p.add_argument("--metadata")
    p.add_argument("--prevent-deletion", action="store_true")
    p = add("delete-registration", "remove a registration")
    p.add_argument("key_id", metavar="KEYID")
    p.add_argument("--resource-crn", required=True)
    p = add("add-apikey", "create an API key and print it")
    p.add_argument("--access", choices=ACCESS_LEVELS, default="manager")
    p.add_argument("--instance")
    p.add_argument("--service", action="store_true", help="a service ID key (S2S)")
    p = add("revoke-apikey", "revoke an API key (IAM then answers 400 BXNIM0415E)")
    p.add_argument("apikey", metavar="KEY")
    p = add("set-access", "change an API key's access level (effective immediately)")
    p.add_argument("apikey", metavar="KEY")
    p.add_argument("--access", choices=ACCESS_LEVELS, required=True)
    add("create-instance", "create another Key Protect instance")
    p = add("fault", "inject a fault into the next N matching requests")
    p.add_argument("--kind", choices=FAULT_KINDS, required=True)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--status", type=int)
    p.add_argument("--retry-after", dest="retry_after")
    p.add_argument("--delay", type=float)
    p.add_argument("--path-contains", dest="path_contains")
    p.add_argument("--body")
    p.add_argument("--mutate", choices=ANSWER_MUTATIONS,
                   help="answer faults: what replaces the answer's ciphertext")
    add("faults", "list pending faults")
    add("clear-faults", "drop all pending faults")
    p = add("advance-clock", "move the emulator clock forward")
    p.add_argument("seconds", type=float, metavar="SECONDS")
    add("clock", "show the emulator clock")
    p = add("config", "show or change timing/strictness settings")
    for k in ("token-lifetime", "rotate-interval", "cooldown", "restore-window", "purge-wait",
              "auto-purge", "dual-auth-window"):
        p.add_argument("--" + k, type=float, dest=k.replace("-", "_"))
    p.add_argument("--strict-registrations", choices=("on", "off"))
    add("log", "print the request log")
    add("reset-log", "clear the request log")
    p = add("token", "exchange an API key (default: STATE_DIR/apikey) for an IAM token")
    p.add_argument("--apikey")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
