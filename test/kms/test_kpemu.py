#!/usr/bin/env python3
"""Tests for the Key Protect emulator (test/kms/kpemu.py).

Runs the emulator as a subprocess (HTTPS, free port, temporary state dir) and talks to
it with certificate verification on.  One test per non-UNCONFIRMED row of the decision
table in keyprotect-api.md section 10 (test_rowNN_...; rows marked UNCONFIRMED there are
tested too, with `unconfirmed` in the name), plus IAM, access levels, persistence,
faults, the request log, the ctl CLI and an end-to-end curl run.

Time-dependent rules are exercised with `advance-clock`, never by sleeping.
Run: python3 test/kms/test_kpemu.py   (last line: "N passed, N failed").
"""

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
KPEMU = os.path.join(HERE, "kpemu.py")
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True      # leave no __pycache__ in the tree
import kpemu  # noqa: E402  (for make_ca / rfc3339 helpers only)

GRANT = "urn:ibm:params:oauth:grant-type:apikey"
MAIN = None          # the shared emulator (EmuProcess)


# --------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------

class EmuProcess:
    """One emulator subprocess with its own state dir."""

    def __init__(self, state_dir, *extra):
        self.state_dir = state_dir
        self.extra = list(extra)
        self.proc = None
        self.info = None

    def start(self, timeout=15):
        info_path = os.path.join(self.state_dir, "emulator.json")
        self.stderr = open(os.path.join(self.state_dir + ".stderr"), "ab")
        self.proc = subprocess.Popen(
            [sys.executable, KPEMU, "serve", "--state-dir", self.state_dir, "--port", "0"]
            + self.extra, stdout=subprocess.DEVNULL, stderr=self.stderr)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("emulator exited with %s" % self.proc.returncode)
            try:
                with open(info_path) as f:
                    info = json.load(f)
                if info.get("pid") == self.proc.pid:
                    self.info = info
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise RuntimeError("emulator did not write emulator.json")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode

    # ---- HTTP ----

    def request(self, method, path, body=None, headers=None, timeout=10, raw=None):
        """-> Response(status, headers, data, json)."""
        u = urllib.parse.urlsplit(self.info["url"])
        if u.scheme == "https":
            ctx = ssl.create_default_context(cafile=self.info["ca_file"])
            conn = http.client.HTTPSConnection(u.hostname, u.port, context=ctx,
                                               timeout=timeout)
        else:
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
        hdrs = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=data, headers=hdrs)
            r = conn.getresponse()
            payload = r.read()
            return Response(r.status, r, payload)
        finally:
            conn.close()

    def ctl(self, *args, check=True):
        p = subprocess.run([sys.executable, KPEMU, "ctl", "--state-dir", self.state_dir]
                           + [str(a) for a in args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=30)
        if check and p.returncode != 0:
            raise AssertionError("ctl %s failed: %s %s" % (args, p.stdout, p.stderr))
        return p

    def ctlj(self, *args):
        return json.loads(self.ctl(*args).stdout)

    def control(self, method, path, body=None):
        r = self.request(method, "/_emu/" + path, body)
        assert 200 <= r.status < 300, (path, r.status, r.data)
        return r.json


class Response:
    def __init__(self, status, resp, data):
        self.status = status
        self.headers = resp.headers
        self.data = data
        try:
            self.json = json.loads(data) if data else None
        except ValueError:
            self.json = None

    def reason_code(self):
        try:
            return self.json["resources"][0]["reasons"][0]["code"]
        except (TypeError, KeyError, IndexError):
            return None

    def __repr__(self):
        return "<%d %s>" % (self.status, self.data[:300])


def setUpModule():
    global MAIN, TMP
    TMP = tempfile.mkdtemp(prefix="kpemu-test-")
    MAIN = EmuProcess(os.path.join(TMP, "main")).start()


def tearDownModule():
    if MAIN:
        MAIN.stop()
    shutil.rmtree(TMP, ignore_errors=True)


class Base(unittest.TestCase):
    """Helpers shared by all tests (all against MAIN unless stated)."""

    tokens = {}

    @property
    def emu(self):
        return MAIN

    @property
    def instance(self):
        return self.emu.info["instance_id"]

    def apikey(self):
        with open(self.emu.info["apikey_file"]) as f:
            return f.read()

    def iam(self, apikey, path="/identity/token", grant=GRANT):
        form = {"apikey": apikey}
        if grant is not None:
            form["grant_type"] = grant
        return self.emu.request("POST", path, raw=urllib.parse.urlencode(form).encode(),
                                headers={"Content-Type": "application/x-www-form-urlencoded",
                                         "Accept": "application/json"})

    def token(self, apikey=None):
        apikey = apikey or self.apikey()
        if apikey not in Base.tokens:
            r = self.iam(apikey)
            self.assertEqual(r.status, 200, r)
            Base.tokens[apikey] = r.json["access_token"]
        return Base.tokens[apikey]

    def advance(self, seconds):
        self.emu.control("POST", "clock/advance", {"seconds": seconds})
        Base.tokens.clear()          # tokens may have expired

    def now(self):
        return self.emu.control("GET", "clock")["now"]

    def kp(self, method, path, body=None, token=None, instance=None, headers=None,
           raw=None, apikey=None):
        hdrs = {"Authorization": "Bearer " + (token or self.token(apikey)),
                "bluemix-instance": instance or self.instance, "Accept": "application/json"}
        hdrs.update(headers or {})
        return self.emu.request(method, "/api/v2/" + path, body, hdrs, raw=raw)

    def create_key(self, name="test-key", standard=False, payload=None, expiration=None):
        res = {"type": kpemu.KEY_TYPE, "name": name, "extractable": standard}
        if payload:
            res["payload"] = payload
        if expiration:
            res["expirationDate"] = expiration
        r = self.kp("POST", "keys", {"metadata": {"collectionType": kpemu.KEY_TYPE,
                                                  "collectionTotal": 1},
                                     "resources": [res]})
        self.assertEqual(r.status, 201, r)
        return r.json["resources"][0]

    def act(self, kid, action, body=None, **kw):
        return self.kp("POST", "keys/%s/actions/%s" % (kid, action), body, **kw)

    def wrap(self, kid, plaintext=None, aad=None):
        body = {}
        if plaintext is not None:
            body["plaintext"] = base64.b64encode(plaintext).decode()
        if aad is not None:
            body["aad"] = aad
        r = self.act(kid, "wrap", body)
        self.assertEqual(r.status, 200, r)
        return r.json

    def key(self, kid):
        r = self.kp("GET", "keys/%s/metadata" % kid)
        self.assertEqual(r.status, 200, r)
        return r.json["resources"][0]

    def assertKP(self, r, status, code=None, target=None):
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.json["metadata"]["collectionType"], kpemu.ERROR_TYPE, r)
        res = r.json["resources"][0]
        self.assertTrue(res["errorMsg"].startswith(kpemu.phrase(status)), r)
        if code is None:
            self.assertNotIn("reasons", res, r)
        else:
            self.assertEqual(r.reason_code(), code, r)
            reason = res["reasons"][0]
            self.assertEqual(reason["status"], status)
            self.assertTrue(reason["message"])
            self.assertTrue(reason["moreInfo"].startswith("https://"))
            if target:
                self.assertEqual(reason["target"]["name"], target, r)

    def register(self, kid, crn, prevent=False):
        return self.emu.control("POST", "keys/%s/registrations" % kid,
                                {"resourceCrn": crn, "preventKeyDeletion": prevent})

    def ctl_delete(self, kid, force=False):
        self.emu.control("POST", "keys/%s/delete" % kid, {"force": force})

    def expiring_key(self, seconds=100):
        exp = kpemu.rfc3339(self.now() + seconds)
        return self.create_key("expiring", expiration=exp)


COS_CRN = "crn:v1:bluemix:public:cloud-object-storage:global:a/abc:inst-%s:bucket:b%s"


# --------------------------------------------------------------------------------------
# Decision table rows (keyprotect-api.md section 10)
# --------------------------------------------------------------------------------------

class DecisionTable(Base):

    def test_row01_any_no_or_invalid_authorization_401(self):
        k = self.create_key()
        for hdr in (None, "Basic dXNlcjpwYXNz", "Bearer"):
            headers = {"bluemix-instance": self.instance}
            if hdr:
                headers["Authorization"] = hdr
            r = self.emu.request("GET", "/api/v2/keys/%s/metadata" % k["id"], headers=headers)
            self.assertKP(r, 401)
            self.assertEqual(r.json["resources"][0]["errorMsg"],
                             "Unauthorized: The user does not have access to the "
                             "specified resource")
        # JWT-shaped but not issued by the emulator (bad signature) -> 401
        h, p, s = self.token().split(".")
        forged = h + "." + p + "." + base64.urlsafe_b64encode(b"x" * 32).decode().rstrip("=")
        self.assertKP(self.kp("GET", "keys", token=forged), 401)

    def test_row02_any_bearer_not_parseable_400_BEARER_SUB_EXTRACTION_ERR(self):
        for tok in ("garbage", "a.b.c", "e30.e30.e30"):
            self.assertKP(self.kp("GET", "keys", token=tok), 400, "BEARER_SUB_EXTRACTION_ERR")

    def test_row03_unconfirmed_missing_bluemix_instance_400(self):
        r = self.emu.request("GET", "/api/v2/keys",
                             headers={"Authorization": "Bearer " + self.token()})
        self.assertKP(r, 400, "BAD_BODY_ERR")
        self.assertIn("bluemix-instance", r.json["resources"][0]["errorMsg"])

    def test_row04_unknown_purged_or_foreign_key_404_KEY_NOT_FOUND_ERR(self):
        self.assertKP(self.kp("GET", "keys/" + kpemu.new_uuid()), 404, "KEY_NOT_FOUND_ERR")
        k = self.create_key()
        self.ctl_delete(k["id"])
        self.emu.control("POST", "keys/%s/purge" % k["id"])
        for method, path in (("GET", "keys/%s"), ("GET", "keys/%s/metadata"),
                             ("POST", "keys/%s/actions/wrap")):
            self.assertKP(self.kp(method, path % k["id"], {} if method == "POST" else None),
                          404, "KEY_NOT_FOUND_ERR")
        other = self.emu.control("POST", "instances")["instance_id"]
        foreign = self.emu.control("POST", "keys", {"instance": other})
        self.assertKP(self.kp("GET", "keys/%s/metadata" % foreign["id"]), 404,
                      "KEY_NOT_FOUND_ERR")

    def test_row05_standard_key_actions_400_KEY_ROOT_REQ_ERR(self):
        k = self.create_key(standard=True)
        for action in ("wrap", "unwrap", "rewrap", "rotate", "disable", "enable"):
            body = {"ciphertext": "eA=="} if action in ("unwrap", "rewrap") else {}
            self.assertKP(self.act(k["id"], action, body), 400, "KEY_ROOT_REQ_ERR")

    def test_row06_wrap_active_200(self):
        k = self.create_key()
        out = self.wrap(k["id"])
        self.assertEqual(len(base64.b64decode(out["plaintext"])), 32)
        self.assertEqual(out["keyVersion"]["id"], k["keyVersion"]["id"])
        envelope = json.loads(base64.b64decode(out["ciphertext"]))
        self.assertEqual(set(envelope), {"ciphertext", "iv", "version", "handle"})
        self.assertEqual(envelope["handle"], k["keyVersion"]["id"])
        out2 = self.wrap(k["id"], b"my dek", aad=["a", "b"])
        self.assertNotIn("plaintext", out2)

    def test_row07_wrap_suspended_or_deactivated_409_KEY_ACTION_INVALID_STATE_ERR(self):
        k = self.create_key()
        self.assertEqual(self.act(k["id"], "disable").status, 204)
        self.assertKP(self.act(k["id"], "wrap", {}), 409, "KEY_ACTION_INVALID_STATE_ERR")
        e = self.expiring_key(50)
        self.advance(60)
        self.assertEqual(self.key(e["id"])["state"], 3)
        self.assertKP(self.act(e["id"], "wrap", {}), 409, "KEY_ACTION_INVALID_STATE_ERR")

    def test_row08_destroyed_key_wrap_unwrap_rewrap_rotate_410(self):
        k = self.create_key()
        ct = self.wrap(k["id"])["ciphertext"]
        self.assertEqual(self.kp("DELETE", "keys/" + k["id"]).status, 204)
        for action in ("wrap", "unwrap", "rewrap", "rotate"):
            r = self.act(k["id"], action, {"ciphertext": ct} if "wrap" in action and
                         action != "wrap" else {})
            self.assertKP(r, 410, "KEY_DELETED_ERR")
        self.assertIn("has been deleted", r.json["resources"][0]["errorMsg"])

    def test_row09_wrap_plaintext_not_base64_400_INVALID_FIELD_ERR(self):
        k = self.create_key()
        r = self.act(k["id"], "wrap", {"plaintext": "not base64!!"})
        self.assertKP(r, 400, "INVALID_FIELD_ERR", target="plaintext")
        self.assertIn("illegal base64 data at input byte 3",
                      r.json["resources"][0]["reasons"][0]["message"])

    def test_row10_unwrap_rewrap_no_body_400_NO_BODY_ERR(self):
        k = self.create_key()
        for action in ("unwrap", "rewrap"):
            self.assertKP(self.act(k["id"], action), 400, "NO_BODY_ERR")

    def test_row11_unwrap_rewrap_bad_ciphertext_400_INVALID_FIELD_ERR(self):
        k = self.create_key()
        not_envelope = base64.b64encode(b"hello, not a wrapped key").decode()
        for action in ("unwrap", "rewrap"):
            for ct in ("%%%not-base64", not_envelope):
                self.assertKP(self.act(k["id"], action, {"ciphertext": ct}), 400,
                              "INVALID_FIELD_ERR", target="ciphertext")

    def test_row12_unwrap_rewrap_mismatch_422_UNPROCESSABLE_CIPHERTEXT_ERR(self):
        k = self.create_key()
        other = self.create_key()
        ct = self.wrap(k["id"], b"secret", aad=["cluster-1"])["ciphertext"]
        env = json.loads(base64.b64decode(ct))
        inner = bytearray(base64.b64decode(env["ciphertext"]))
        inner[0] ^= 1
        env["ciphertext"] = base64.b64encode(bytes(inner)).decode()
        tampered = base64.b64encode(json.dumps(env).encode()).decode()
        for action in ("unwrap", "rewrap"):
            cases = [(k["id"], ct, ["cluster-2"]), (k["id"], ct, None),
                     (k["id"], tampered, ["cluster-1"]), (other["id"], ct, ["cluster-1"])]
            for kid, c, aad in cases:
                body = {"ciphertext": c}
                if aad is not None:
                    body["aad"] = aad
                self.assertKP(self.act(kid, action, body), 422,
                              "UNPROCESSABLE_CIPHERTEXT_ERR")

    def test_row13_unwrap_rewrap_active_or_deactivated_200(self):
        k = self.create_key()
        w = self.wrap(k["id"], b"dek-1", aad=["x"])
        r = self.act(k["id"], "unwrap", {"ciphertext": w["ciphertext"], "aad": ["x"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(base64.b64decode(r.json["plaintext"]), b"dek-1")
        self.assertEqual(r.json["keyVersion"]["id"], w["keyVersion"]["id"])
        self.assertNotIn("rewrappedKeyVersion", r.json)
        r = self.act(k["id"], "rewrap", {"ciphertext": w["ciphertext"], "aad": ["x"]})
        self.assertEqual(r.status, 200, r)
        self.assertNotIn("plaintext", r.json)
        self.assertNotEqual(r.json["ciphertext"], w["ciphertext"])
        # Deactivated (expired) key: unwrap and rewrap still work.
        e = self.expiring_key(50)
        w = self.wrap(e["id"], b"dek-2")
        self.advance(60)
        self.assertEqual(self.key(e["id"])["state"], 3)
        for action in ("unwrap", "rewrap"):
            self.assertEqual(self.act(e["id"], action, {"ciphertext": w["ciphertext"]}).status,
                             200)

    def test_row14_unwrap_rewrap_suspended_409(self):
        k = self.create_key()
        ct = self.wrap(k["id"])["ciphertext"]
        self.act(k["id"], "disable")
        for action in ("unwrap", "rewrap"):
            self.assertKP(self.act(k["id"], action, {"ciphertext": ct}), 409,
                          "KEY_ACTION_INVALID_STATE_ERR")

    def test_row15_rotate_active_or_deactivated_204(self):
        k = self.create_key()
        r = self.act(k["id"], "rotate")
        self.assertEqual(r.status, 204, r)
        self.assertEqual(r.data, b"")
        meta = self.key(k["id"])
        self.assertNotEqual(meta["keyVersion"]["id"], k["keyVersion"]["id"])
        self.assertIn("lastRotateDate", meta)
        e = self.expiring_key(50)
        self.advance(60)
        self.assertEqual(self.act(e["id"], "rotate", {}).status, 204)

    def test_row16_rotate_within_interval_409_KEY_ROTATION_NOT_PERMITTED(self):
        k = self.create_key()
        self.assertEqual(self.act(k["id"], "rotate").status, 204)
        r = self.act(k["id"], "rotate")
        self.assertKP(r, 409, "KEY_ROTATION_NOT_PERMITTED")
        self.advance(3601)
        self.assertEqual(self.act(k["id"], "rotate").status, 204)

    def test_row17_rotate_imported_without_payload_400_KEY_PAYLOAD_REQ_ERR(self):
        k = self.create_key(payload=base64.b64encode(os.urandom(32)).decode())
        self.assertTrue(k["imported"])
        self.assertKP(self.act(k["id"], "rotate", {}), 400, "KEY_PAYLOAD_REQ_ERR")
        r = self.act(k["id"], "rotate", {"payload": base64.b64encode(os.urandom(32)).decode()})
        self.assertEqual(r.status, 204, r)

    def test_row18_rotate_suspended_409(self):
        k = self.create_key()
        self.act(k["id"], "disable")
        self.assertKP(self.act(k["id"], "rotate"), 409, "KEY_ACTION_INVALID_STATE_ERR")

    def test_row19_disable_active_204(self):
        k = self.create_key()
        self.assertEqual(self.act(k["id"], "disable").status, 204)
        self.assertEqual(self.key(k["id"])["state"], 2)

    def test_row20_disable_other_states_409(self):
        k = self.create_key()
        self.act(k["id"], "disable")
        self.assertKP(self.act(k["id"], "disable"), 409, "KEY_ACTION_INVALID_STATE_ERR")
        d = self.create_key()
        self.ctl_delete(d["id"])
        self.assertKP(self.act(d["id"], "disable"), 409, "KEY_ACTION_INVALID_STATE_ERR")
        e = self.expiring_key(10)
        self.advance(20)
        self.assertKP(self.act(e["id"], "disable"), 409, "KEY_ACTION_INVALID_STATE_ERR")

    def test_row21_enable_suspended_after_cooldown_204(self):
        k = self.create_key()
        self.act(k["id"], "disable")
        self.advance(31)
        self.assertEqual(self.act(k["id"], "enable").status, 204)
        self.assertEqual(self.key(k["id"])["state"], 1)

    def test_row22_enable_within_cooldown_409_REQ_TOO_EARLY_ERR(self):
        k = self.create_key()
        self.act(k["id"], "disable")
        self.assertKP(self.act(k["id"], "enable"), 409, "REQ_TOO_EARLY_ERR")

    def test_row23_enable_other_states_409(self):
        k = self.create_key()
        self.assertKP(self.act(k["id"], "enable"), 409, "KEY_ACTION_INVALID_STATE_ERR")
        self.ctl_delete(k["id"])
        self.assertKP(self.act(k["id"], "enable"), 409, "KEY_ACTION_INVALID_STATE_ERR")

    def test_row24_delete_destroyed_410_KEY_DELETED_ERR(self):
        k = self.create_key()
        self.assertEqual(self.kp("DELETE", "keys/" + k["id"]).status, 204)
        self.assertKP(self.kp("DELETE", "keys/" + k["id"]), 410, "KEY_DELETED_ERR")

    def test_row25_delete_prevent_key_deletion_409_PREV_KEY_DEL_ERR(self):
        k = self.create_key()
        self.register(k["id"], COS_CRN % ("p", "1"), prevent=True)
        for query in ("", "?force=true"):
            self.assertKP(self.kp("DELETE", "keys/" + k["id"] + query), 409,
                          "PREV_KEY_DEL_ERR")

    def test_row26_delete_registered_without_force_409_PROTECTED_RESOURCE_ERR(self):
        k = self.create_key()
        crn = COS_CRN % ("r", "1")
        self.register(k["id"], crn)
        self.assertKP(self.kp("DELETE", "keys/" + k["id"]), 409, "PROTECTED_RESOURCE_ERR",
                      target="force")
        self.assertEqual(self.kp("DELETE", "keys/%s?force=true" % k["id"]).status, 204)
        regs = self.kp("GET", "keys/%s/registrations" % k["id"]).json["resources"]
        self.assertEqual([r["resourceCrn"] for r in regs], [crn])   # kept until purge

    def test_row27_delete_dual_auth_409_AUTHORIZATIONS_NOT_MET(self):
        k = self.create_key()
        pol = {"metadata": {"collectionType": kpemu.POLICY_TYPE, "collectionTotal": 1},
               "resources": [{"type": kpemu.POLICY_TYPE, "dualAuthDelete": {"enabled": True}}]}
        r = self.kp("PUT", "keys/%s/policies?policy=dualAuthDelete" % k["id"], pol)
        self.assertEqual(r.status, 200, r)
        self.assertTrue(self.key(k["id"])["dualAuthDelete"]["enabled"])
        # not set for deletion
        self.assertKP(self.kp("DELETE", "keys/" + k["id"]), 409, "AUTHORIZATIONS_NOT_MET")
        # set by the same user
        self.assertEqual(self.act(k["id"], "setKeyForDeletion").status, 204)
        self.assertTrue(self.key(k["id"])["dualAuthDelete"]["keySetForDeletion"])
        self.assertKP(self.kp("DELETE", "keys/" + k["id"]), 409, "AUTHORIZATIONS_NOT_MET")
        second = self.emu.control("POST", "apikeys", {"access": "manager"})["apikey"]
        # authorisation older than 7 days
        self.advance(8 * 86400)
        self.assertKP(self.kp("DELETE", "keys/" + k["id"], apikey=second), 409,
                      "AUTHORIZATIONS_NOT_MET")
        # fresh authorisation, second manager deletes
        self.assertEqual(self.act(k["id"], "setKeyForDeletion").status, 204)
        self.assertEqual(self.kp("DELETE", "keys/" + k["id"], apikey=second).status, 204)
        # a key without the policy cannot be set for deletion
        plain = self.create_key()
        self.assertKP(self.act(plain["id"], "setKeyForDeletion"), 409, "NOT_DUAL_AUTH_ERR")

    def test_row28_delete_otherwise_204_or_200_with_prefer(self):
        k = self.create_key()
        r = self.kp("DELETE", "keys/" + k["id"])
        self.assertEqual((r.status, r.data), (204, b""))
        meta = self.key(k["id"])
        self.assertEqual((meta["state"], meta["deleted"]), (5, True))
        for field in ("deletionDate", "deletedBy", "restoreExpirationDate",
                      "purgeAllowedFrom", "purgeScheduledOn"):
            self.assertIn(field, meta)
        k2 = self.create_key()
        r = self.kp("DELETE", "keys/" + k2["id"], headers={"Prefer": "return=representation"})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["resources"][0]["state"], 5)

    def test_row29_unconfirmed_restore_not_deleted_409(self):
        k = self.create_key()
        self.assertKP(self.kp("POST", "keys/%s/restore" % k["id"]), 409,
                      "KEY_ACTION_INVALID_STATE_ERR")

    def test_row30_restore_within_cooldown_409_REQ_TOO_EARLY_ERR(self):
        k = self.create_key()
        self.kp("DELETE", "keys/" + k["id"])
        self.assertKP(self.kp("POST", "keys/%s/restore" % k["id"]), 409, "REQ_TOO_EARLY_ERR")

    def test_row31_restore_after_30_days_400_KEY_RESTORE_EXPIRED(self):
        k = self.create_key()
        self.kp("DELETE", "keys/" + k["id"])
        self.advance(31 * 86400)
        self.assertKP(self.kp("POST", "keys/%s/restore" % k["id"]), 400, "KEY_RESTORE_EXPIRED")

    def test_row32_restore_expired_key_400_KEY_EXPIRED_ERR(self):
        e = self.expiring_key(100)
        self.assertEqual(self.kp("DELETE", "keys/" + e["id"]).status, 204)
        self.advance(200)
        self.assertKP(self.kp("POST", "keys/%s/restore" % e["id"]), 400, "KEY_EXPIRED_ERR")

    def test_row33_restore_otherwise_201(self):
        k = self.create_key()
        w = self.wrap(k["id"], b"dek")
        self.kp("DELETE", "keys/" + k["id"])
        self.advance(31)
        r = self.kp("POST", "keys/%s/restore" % k["id"])
        self.assertEqual(r.status, 201, r)
        self.assertEqual(r.json["resources"][0]["state"], 1)
        self.assertFalse(r.json["resources"][0]["deleted"])
        r = self.act(k["id"], "unwrap", {"ciphertext": w["ciphertext"]})
        self.assertEqual(base64.b64decode(r.json["plaintext"]), b"dek")

    def test_row34_unconfirmed_purge_not_deleted_or_too_early_409(self):
        k = self.create_key()
        self.assertKP(self.kp("DELETE", "keys/%s/purge" % k["id"]), 409,
                      "KEY_ACTION_INVALID_STATE_ERR")
        self.kp("DELETE", "keys/" + k["id"])
        self.assertKP(self.kp("DELETE", "keys/%s/purge" % k["id"]), 409, "REQ_TOO_EARLY_ERR")

    def test_row35_purge_200_then_404(self):
        k = self.create_key()
        self.register(k["id"], COS_CRN % ("g", "1"))
        self.kp("DELETE", "keys/%s?force=true" % k["id"])
        self.advance(4 * 3600 + 1)
        self.assertTrue(self.key(k["id"])["purgeAllowed"])
        r = self.kp("DELETE", "keys/%s/purge" % k["id"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["resources"][0]["id"], k["id"])
        for method, path in (("GET", "keys/%s"), ("GET", "keys/%s/metadata"),
                             ("GET", "keys/%s/registrations"), ("POST", "keys/%s/restore"),
                             ("DELETE", "keys/%s"), ("GET", "keys/%s/versions")):
            self.assertKP(self.kp(method, path % k["id"]), 404, "KEY_NOT_FOUND_ERR")

    def test_row36_versions_non_active_without_allKeyStates_409(self):
        k = self.create_key()
        self.act(k["id"], "disable")
        self.assertKP(self.kp("GET", "keys/%s/versions" % k["id"]), 409,
                      "KEY_ACTION_INVALID_STATE_ERR")
        r = self.kp("GET", "keys/%s/versions?allKeyStates=true" % k["id"])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.json["metadata"]["collectionType"], kpemu.VERSION_TYPE)

    def test_row37_registration_write_user_token_strict_403_SERVICE_ONLY_ERR(self):
        k = self.create_key()
        path = "keys/%s/registrations/%s" % (k["id"], urllib.parse.quote(
            COS_CRN % ("s", "1"), safe=""))
        body = {"metadata": {"collectionType": "application/vnd.ibm.kms.registration_input"
                             "+json", "collectionTotal": 1},
                "resources": [{"preventKeyDeletion": False, "description": "db"}]}
        self.emu.control("POST", "config", {"strict_registrations": True})
        try:
            self.assertKP(self.kp("POST", path, body), 403, "SERVICE_ONLY_ERR")
            service = self.emu.control("POST", "apikeys", {"service": True})["apikey"]
            r = self.kp("POST", path, body, apikey=service)
            self.assertEqual(r.status, 201, r)
            self.assertEqual(r.json["resources"][0]["resourceCrn"], COS_CRN % ("s", "1"))
            self.assertKP(self.kp("DELETE", path), 403, "SERVICE_ONLY_ERR")
            self.assertEqual(self.kp("DELETE", path, apikey=service).status, 204)
        finally:
            self.emu.control("POST", "config", {"strict_registrations": False})

    def test_row38_registration_create_standard_or_nonactive_422(self):
        std = self.create_key(standard=True)
        crn = urllib.parse.quote(COS_CRN % ("x", "1"), safe="")
        self.assertKP(self.kp("POST", "keys/%s/registrations/%s" % (std["id"], crn)), 422,
                      "KEY_ROOT_REQ_REG_ERR")
        k = self.create_key()
        self.act(k["id"], "disable")
        self.assertKP(self.kp("POST", "keys/%s/registrations/%s" % (k["id"], crn)), 422,
                      "KEY_INVALID_STATE_ERR")


# --------------------------------------------------------------------------------------
# IAM and access levels
# --------------------------------------------------------------------------------------

class IAM(Base):

    def test_iam_unknown_apikey_400_BXNIM0415E(self):
        r = self.iam("definitely-not-a-key")
        self.assertEqual(r.status, 400, r)
        self.assertEqual(r.json["errorCode"], "BXNIM0415E")
        self.assertEqual(r.json["errorMessage"], "Provided API key could not be found.")
        self.assertIn("requestId", r.json["context"])

    def test_iam_revoked_apikey_400_BXNIM0415E(self):
        key = self.emu.control("POST", "apikeys", {})["apikey"]
        self.assertEqual(self.iam(key).status, 200)
        self.emu.control("POST", "apikeys/revoke", {"apikey": key})
        r = self.iam(key)
        self.assertEqual((r.status, r.json["errorCode"]), (400, "BXNIM0415E"))

    def test_iam_grant_type_missing_or_wrong_400(self):
        r = self.iam(self.apikey(), grant=None)
        self.assertEqual((r.status, r.json["errorCode"]), (400, "BXNIM0109E"))
        r = self.iam(self.apikey(), grant="password")
        self.assertEqual(r.status, 400)
        self.assertTrue(r.json["errorCode"].startswith("BXNIM"))

    def test_iam_token_response_and_jwt_shape(self):
        for path in ("/identity/token", "/oidc/token"):
            r = self.iam(self.apikey(), path)
            self.assertEqual(r.status, 200, r)
            j = r.json
            self.assertEqual(j["token_type"], "Bearer")
            self.assertEqual(j["expires_in"], 3600)
            self.assertTrue(j["refresh_token"])
            parts = j["access_token"].split(".")
            self.assertEqual(len(parts), 3)
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
            for field in ("exp", "iat", "sub", "iam_id"):
                self.assertIn(field, claims)
            self.assertEqual(claims["exp"], j["expiration"])
            self.assertEqual(claims["exp"] - claims["iat"], 3600)

    def test_iam_expired_token_401(self):
        tok = self.token()
        k = self.create_key()
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % k["id"], token=tok).status, 200)
        self.advance(3601)
        self.assertKP(self.kp("GET", "keys/%s/metadata" % k["id"], token=tok), 401)
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % k["id"]).status, 200)  # fresh

    def test_access_none_gets_token_but_401(self):
        key = self.emu.control("POST", "apikeys", {"access": "none"})["apikey"]
        for method, path in (("GET", "keys"), ("POST", "keys/%s/actions/wrap"
                                               % self.create_key()["id"])):
            r = self.kp(method, path, {} if method == "POST" else None, apikey=key)
            self.assertKP(r, 401)

    def test_access_reader_can_use_but_not_manage(self):
        k = self.create_key()
        reader = self.emu.control("POST", "apikeys", {"access": "reader"})["apikey"]
        w = self.act(k["id"], "wrap", {}, apikey=reader)
        self.assertEqual(w.status, 200, w)
        for action in ("unwrap", "rewrap"):
            self.assertEqual(self.act(k["id"], action, {"ciphertext": w.json["ciphertext"]},
                                      apikey=reader).status, 200)
        for method, path in (("GET", "keys"), ("GET", "keys/%s"), ("GET", "keys/%s/metadata"),
                             ("GET", "keys/%s/versions"), ("GET", "keys/%s/registrations"),
                             ("GET", "keys/registrations")):
            self.assertEqual(self.kp(method, path.replace("%s", k["id"]),
                                     apikey=reader).status, 200, path)
        for action in ("rotate", "disable", "enable", "restore"):
            self.assertKP(self.act(k["id"], action, apikey=reader), 403, "UNAUTHORIZED_ERR")
        self.assertKP(self.kp("DELETE", "keys/" + k["id"], apikey=reader), 403,
                      "UNAUTHORIZED_ERR")
        self.assertKP(self.kp("DELETE", "keys/%s/purge" % k["id"], apikey=reader), 403,
                      "UNAUTHORIZED_ERR")
        self.assertKP(self.kp("POST", "keys", {"resources": [{"name": "x"}]}, apikey=reader),
                      403, "UNAUTHORIZED_ERR")
        # Reader never sees a standard key's payload; Manager does.
        s = self.create_key(standard=True)
        self.assertNotIn("payload", self.kp("GET", "keys/" + s["id"],
                                            apikey=reader).json["resources"][0])
        self.assertIn("payload", self.kp("GET", "keys/" + s["id"]).json["resources"][0])

    def test_set_access_takes_effect_immediately(self):
        key = self.emu.control("POST", "apikeys", {"access": "manager"})["apikey"]
        self.assertEqual(self.kp("GET", "keys", apikey=key).status, 200)
        self.emu.control("POST", "apikeys/access", {"apikey": key, "access": "none"})
        self.assertKP(self.kp("GET", "keys", apikey=key), 401)

    def test_apikey_of_other_instance_401(self):
        other = self.emu.control("POST", "instances")["instance_id"]
        key = self.emu.control("POST", "apikeys", {"instance": other})["apikey"]
        k = self.create_key()
        self.assertKP(self.kp("GET", "keys/%s/metadata" % k["id"], apikey=key), 401)
        # ...while it works for its own instance
        self.assertEqual(self.kp("GET", "keys", apikey=key, instance=other).status, 200)


# --------------------------------------------------------------------------------------
# Key Protect behaviour beyond the table
# --------------------------------------------------------------------------------------

class KeyProtect(Base):

    def test_key_fields_and_crn(self):
        k = self.create_key("fields")
        for field in ("type", "id", "name", "state", "crn", "extractable", "imported",
                      "keyVersion", "creationDate", "lastUpdateDate", "dualAuthDelete",
                      "deleted", "keyRingID", "createdBy"):
            self.assertIn(field, k)
        self.assertEqual((k["state"], k["extractable"], k["deleted"]), (1, False, False))
        f = k["crn"].split(":")
        self.assertEqual(len(f), 10)
        self.assertEqual((f[0], f[4], f[5], f[6], f[7], f[8], f[9]),
                         ("crn", "kms", "us-south", "a/" + self.emu.info["account"],
                          self.instance, "key", k["id"]))
        full = self.kp("GET", "keys/" + k["id"])
        self.assertEqual(full.json["metadata"],
                         {"collectionType": kpemu.KEY_TYPE, "collectionTotal": 1})

    def test_create_key_validation(self):
        r = self.kp("POST", "keys", {"metadata": {"collectionType": kpemu.KEY_TYPE,
                                                  "collectionTotal": 2},
                                     "resources": [{"name": "x1"}]})
        self.assertKP(r, 400, "COLLECTION_TOTAL_MISMATCH_ERR")
        self.assertKP(self.kp("POST", "keys", {"resources": []}), 400, "BAD_BODY_ERR")
        self.assertKP(self.kp("POST", "keys", {"resources": [{"extractable": False}]}), 400,
                      "BAD_BODY_ERR")
        r = self.kp("POST", "keys", {"resources": [{"name": "imp", "payload":
                                                    base64.b64encode(b"short").decode()}]})
        self.assertKP(r, 400, "INVALID_FIELD_ERR", target="payload")

    def test_unwrap_after_rotate_returns_rewrapped_ciphertext(self):
        k = self.create_key()
        w = self.wrap(k["id"], b"old-dek", aad=["sysid"])
        self.assertEqual(self.act(k["id"], "rotate").status, 204)
        latest = self.key(k["id"])["keyVersion"]["id"]
        r = self.act(k["id"], "unwrap", {"ciphertext": w["ciphertext"], "aad": ["sysid"]})
        self.assertEqual(r.status, 200, r)
        self.assertEqual(base64.b64decode(r.json["plaintext"]), b"old-dek")
        self.assertEqual(r.json["keyVersion"]["id"], w["keyVersion"]["id"])
        self.assertEqual(r.json["rewrappedKeyVersion"]["id"], latest)
        r2 = self.act(k["id"], "unwrap", {"ciphertext": r.json["ciphertext"], "aad": ["sysid"]})
        self.assertEqual(base64.b64decode(r2.json["plaintext"]), b"old-dek")
        self.assertEqual(r2.json["keyVersion"]["id"], latest)
        self.assertNotIn("ciphertext", r2.json)
        rw = self.act(k["id"], "rewrap", {"ciphertext": w["ciphertext"], "aad": ["sysid"]})
        self.assertEqual((rw.json["keyVersion"]["id"], rw.json["rewrappedKeyVersion"]["id"]),
                         (w["keyVersion"]["id"], latest))

    def test_versions_newest_first(self):
        k = self.create_key()
        self.act(k["id"], "rotate")
        r = self.kp("GET", "keys/%s/versions?totalCount=true" % k["id"])
        self.assertEqual(r.status, 200)
        ids = [v["id"] for v in r.json["resources"]]
        self.assertEqual(len(ids), 2)
        self.assertEqual(ids[0], self.key(k["id"])["keyVersion"]["id"])
        self.assertEqual(ids[1], k["keyVersion"]["id"])
        self.assertEqual(r.json["metadata"]["totalCount"], 2)

    def test_list_keys_and_head(self):
        k = self.create_key("listed")
        d = self.create_key("gone")
        self.ctl_delete(d["id"])
        r = self.kp("GET", "keys?limit=5000")
        ids = [x["id"] for x in r.json["resources"]]
        self.assertIn(k["id"], ids)
        self.assertNotIn(d["id"], ids)
        self.assertNotIn("payload", r.json["resources"][0])
        r = self.kp("GET", "keys?state=5&limit=5000")
        self.assertIn(d["id"], [x["id"] for x in r.json["resources"]])
        r = self.kp("HEAD", "keys")
        self.assertEqual(r.status, 200)
        self.assertGreaterEqual(int(r.headers["Key-Total"]), 1)

    def test_registrations_listing_and_crn_query(self):
        k = self.create_key()
        a, b = COS_CRN % ("q", "prod-1"), COS_CRN % ("q", "test-1")
        self.register(k["id"], a)
        self.register(k["id"], b, prevent=True)
        r = self.kp("GET", "keys/%s/registrations" % k["id"])
        self.assertEqual(r.json["metadata"]["collectionType"], kpemu.REGISTRATION_TYPE)
        self.assertEqual(sorted(x["resourceCrn"] for x in r.json["resources"]), sorted([a, b]))
        reg = r.json["resources"][0]
        for field in ("keyId", "resourceCrn", "createdBy", "creationDate", "lastUpdated",
                      "preventKeyDeletion", "keyVersion"):
            self.assertIn(field, reg)
        q = urllib.parse.urlencode({"urlEncodedResourceCRNQuery": a[:-len("prod-1")] + "prod*"})
        r = self.kp("GET", "keys/registrations?" + q)
        self.assertEqual([x["resourceCrn"] for x in r.json["resources"]], [a])
        r = self.kp("GET", "keys/%s/registrations?preventKeyDeletion=true" % k["id"])
        self.assertEqual([x["resourceCrn"] for x in r.json["resources"]], [b])

    def test_both_action_url_forms(self):
        k = self.create_key()
        kid = k["id"]
        w = self.kp("POST", "keys/%s?action=wrap" % kid, {"aad": ["q"]})
        self.assertEqual(w.status, 200, w)
        u = self.kp("POST", "keys/%s?action=unwrap" % kid,
                    {"ciphertext": w.json["ciphertext"], "aad": ["q"]})
        self.assertEqual(u.json["plaintext"], w.json["plaintext"])
        u2 = self.act(kid, "unwrap", {"ciphertext": w.json["ciphertext"], "aad": ["q"]})
        self.assertEqual(u2.json["plaintext"], w.json["plaintext"])
        self.assertEqual(self.kp("POST", "keys/%s?action=rewrap" % kid,
                                 {"ciphertext": w.json["ciphertext"], "aad": ["q"]}).status, 200)
        self.assertEqual(self.kp("POST", "keys/%s?action=rotate" % kid).status, 204)
        self.assertEqual(self.kp("POST", "keys/%s?action=disable" % kid).status, 204)
        self.advance(31)
        self.assertEqual(self.kp("POST", "keys/%s?action=enable" % kid).status, 204)
        self.kp("DELETE", "keys/" + kid)
        self.advance(31)
        self.assertEqual(self.kp("POST", "keys/%s?action=restore" % kid).status, 201)
        self.assertKP(self.kp("POST", "keys/%s?action=explode" % kid), 400,
                      "INVALID_QUERY_PARAM_ERR")
        log = self.emu.control("GET", "log")
        actions = {e["action"] for e in log if e["key_id"] == kid}
        for name in ("wrap", "unwrap", "rewrap", "rotate", "disable", "enable", "restore"):
            self.assertIn("kms.secrets." + name, actions)

    def test_correlation_id_echoed_or_minted(self):
        r = self.kp("GET", "keys", headers={"correlation-id": "my-corr-123"})
        self.assertEqual(r.headers["correlation-id"], "my-corr-123")
        r = self.kp("GET", "keys")
        self.assertRegex(r.headers["correlation-id"], kpemu.UUID_RE)
        r = self.kp("GET", "keys/" + kpemu.new_uuid(), headers={"correlation-id": "err-1"})
        self.assertEqual((r.status, r.headers["correlation-id"]), (404, "err-1"))
        log = self.emu.control("GET", "log")
        self.assertIn("my-corr-123", [e["correlation_id"] for e in log])

    def test_unimplemented_features_answer_501(self):
        self.assertKP(self.kp("GET", "key_rings"), 501)


# --------------------------------------------------------------------------------------
# Faults, log, control plane
# --------------------------------------------------------------------------------------

class Faults(Base):

    def tearDown(self):
        self.emu.control("DELETE", "faults")

    def fault(self, **kw):
        return self.emu.control("POST", "faults", kw)

    def test_fault_latency(self):
        k = self.create_key()
        self.fault(kind="latency", count=1, delay=0.6, path_contains=k["id"])
        t = time.monotonic()
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % k["id"]).status, 200)
        self.assertGreaterEqual(time.monotonic() - t, 0.55)
        t = time.monotonic()
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % k["id"]).status, 200)
        self.assertLess(time.monotonic() - t, 0.5)

    def test_fault_timeout(self):
        k = self.create_key()
        self.fault(kind="timeout", count=1, delay=1.5, path_contains=k["id"])
        hdrs = {"Authorization": "Bearer " + self.token(), "bluemix-instance": self.instance}
        with self.assertRaises((socket.timeout, TimeoutError)):
            self.emu.request("GET", "/api/v2/keys/%s/metadata" % k["id"], headers=hdrs,
                             timeout=0.5)
        self.fault(kind="timeout", count=1, delay=0, path_contains=k["id"])
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.emu.request("GET", "/api/v2/keys/%s/metadata" % k["id"], headers=hdrs)
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % k["id"]).status, 200)
        time.sleep(1.1)     # let the sleeping server thread log its entry
        entries = [e for e in self.emu.control("GET", "log") if e["fault"] == "timeout"]
        self.assertTrue(entries and all(e["status"] is None for e in entries))

    def test_fault_status_429_retry_after_then_recovers(self):
        k = self.create_key()
        self.fault(kind="status", count=2, status=429, retry_after="2",
                   path_contains=k["id"] + "/actions/wrap")
        for _ in range(2):
            r = self.act(k["id"], "wrap", {})
            self.assertEqual(r.status, 429)
            self.assertEqual(r.headers["Retry-After"], "2")
            self.assertTrue(r.json["resources"][0]["errorMsg"].startswith("Too Many Requests"))
        self.assertEqual(self.act(k["id"], "wrap", {}).status, 200)

    def test_fault_answer_mutations(self):
        k = self.create_key()
        wrapped = self.act(k["id"], "wrap", {"plaintext": base64.b64encode(b"k" * 32).decode()})
        ct = wrapped.json["ciphertext"]
        for mutate, check in (
                ("garbage_b64", lambda r: isinstance(r.json["ciphertext"], str) and
                 r.json["ciphertext"] != ct and base64.b64decode(r.json["ciphertext"])),
                ("object", lambda r: isinstance(r.json["ciphertext"], dict)),
                ("number", lambda r: r.json["ciphertext"] == 12345),
                ("huge", lambda r: len(r.json["ciphertext"]) == 2 * 1024 * 1024),
                ("truncated", lambda r: r.json is None and r.status == 200)):
            self.fault(kind="answer", mutate=mutate, count=1,
                       path_contains=k["id"] + "/actions/rewrap")
            r = self.act(k["id"], "rewrap", {"ciphertext": ct})
            self.assertEqual(r.status, 200, mutate)
            self.assertTrue(check(r), mutate)
        # the fault is used up: the next answer is genuine
        r = self.act(k["id"], "rewrap", {"ciphertext": ct})
        self.assertEqual(self.act(k["id"], "unwrap", {"ciphertext": r.json["ciphertext"]}).status, 200)
        with self.assertRaises(Exception):
            self.fault(kind="answer", mutate="nonsense", count=1)

    def test_fault_lost_answer_after_rotate(self):
        k = self.create_key()
        before = self.kp("GET", "keys/%s/metadata" % k["id"]).json["resources"][0]["keyVersion"]["id"]
        hdrs = {"Authorization": "Bearer " + self.token(), "bluemix-instance": self.instance,
                "Content-Type": "application/json"}
        self.fault(kind="lost_answer", count=1, path_contains=k["id"] + "/actions/rotate")
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            self.emu.request("POST", "/api/v2/keys/%s/actions/rotate" % k["id"], body={},
                             headers=hdrs)
        after = self.kp("GET", "keys/%s/metadata" % k["id"]).json["resources"][0]["keyVersion"]["id"]
        self.assertNotEqual(before, after, "the rotation happened although the answer was lost")
        r = self.act(k["id"], "rotate", {})
        self.assertEqual(r.status, 409)
        self.assertEqual(r.reason_code(), "KEY_ROTATION_NOT_PERMITTED")
        # with a status: the action happens, the answer is a 5xx
        self.fault(kind="lost_answer", status=503, count=1, path_contains=k["id"] + "/actions/disable")
        self.assertEqual(self.act(k["id"], "disable", {}).status, 503)
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % k["id"]).json["resources"][0]["state"], 2)

    def test_imported_key_rotate_needs_payload(self):
        k = self.create_key(payload=base64.b64encode(b"i" * 32).decode())
        r = self.act(k["id"], "rotate", {})
        self.assertEqual(r.status, 400)
        self.assertEqual(r.reason_code(), "KEY_PAYLOAD_REQ_ERR")

    def test_fault_status_5xx(self):
        self.fault(kind="status", count=1, status=503, path_contains="/identity/token")
        r = self.iam(self.apikey())
        self.assertEqual(r.status, 503)
        self.assertEqual(self.iam(self.apikey()).status, 200)
        self.fault(kind="status", count=1, path_contains="/api/v2/keys?limit=7")
        self.assertEqual(self.kp("GET", "keys?limit=7").status, 503)
        self.fault(kind="status", count=1, status=500, path_contains="/api/v2/keys?limit=8")
        self.assertEqual(self.kp("GET", "keys?limit=8").status, 500)

    def test_fault_malformed_json(self):
        k = self.create_key()
        self.fault(kind="malformed", count=1, path_contains=k["id"])
        r = self.kp("GET", "keys/%s/metadata" % k["id"])
        self.assertEqual(r.status, 200)
        self.assertIsNone(r.json)
        with self.assertRaises(ValueError):
            json.loads(r.data)

    def test_fault_plaintext_error_body(self):
        k = self.create_key()
        self.fault(kind="plaintext", count=1, status=502, path_contains=k["id"])
        r = self.kp("GET", "keys/%s/metadata" % k["id"])
        self.assertEqual(r.status, 502)
        self.assertTrue(r.headers["Content-Type"].startswith("text/plain"))
        self.assertIsNone(r.json)
        self.assertIn(b"Bad Gateway", r.data)

    def test_fault_scoped_by_path(self):
        a, b = self.create_key(), self.create_key()
        self.fault(kind="status", count=5, status=500, path_contains=a["id"])
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % b["id"]).status, 200)
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % a["id"]).status, 500)
        pending = self.emu.control("GET", "faults")
        self.assertEqual(pending[0]["remaining"], 4)
        self.emu.control("DELETE", "faults")
        self.assertEqual(self.kp("GET", "keys/%s/metadata" % a["id"]).status, 200)

    def test_request_log_has_actions_and_no_secrets(self):
        self.emu.control("DELETE", "log")
        apikey = self.apikey()
        Base.tokens.clear()
        tok = self.token()
        k = self.create_key()
        w = self.wrap(k["id"], b"super-secret-dek")
        self.act(k["id"], "unwrap", {"ciphertext": w["ciphertext"]})
        self.kp("GET", "keys/%s/versions" % k["id"])
        log = self.emu.control("GET", "log")
        self.assertEqual([e["action"] for e in log],
                         ["iam.identity.token", "kms.secrets.create", "kms.secrets.wrap",
                          "kms.secrets.unwrap", "kms.secrets-key-versions.list"])
        for e in log:
            for field in ("method", "path", "status", "correlation_id", "action", "time"):
                self.assertIn(field, e)
        text = json.dumps(log)
        with open(os.path.join(self.emu.state_dir, "requests.log")) as f:
            text += f.read()
        for secret in (apikey, tok, tok.split(".")[2], w["ciphertext"],
                       base64.b64encode(b"super-secret-dek").decode()):
            self.assertNotIn(secret, text)
        self.emu.control("DELETE", "log")
        self.assertEqual(self.emu.control("GET", "log"), [])


class ControlPlane(Base):

    def test_emulator_json_and_apikey_file(self):
        info = self.emu.info
        for field in ("url", "port", "ca_file", "pid", "instance_id", "region", "account"):
            self.assertIn(field, info)
        self.assertEqual(info["url"], "https://127.0.0.1:%d" % info["port"])
        self.assertEqual(info["ca_file"], os.path.join(self.emu.state_dir, "ca.crt"))
        self.assertEqual(info["region"], "us-south")
        self.assertRegex(info["instance_id"], kpemu.UUID_RE)
        path = os.path.join(self.emu.state_dir, "apikey")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path, "rb") as f:
            content = f.read()
        self.assertNotIn(b"\n", content)
        self.assertGreater(len(content), 20)

    def test_server_certificate_names(self):
        out = subprocess.run(["openssl", "x509", "-in",
                              os.path.join(self.emu.state_dir, "server.crt"), "-noout",
                              "-ext", "subjectAltName"], stdout=subprocess.PIPE, check=True)
        self.assertIn(b"IP Address:127.0.0.1", out.stdout)
        self.assertIn(b"DNS:localhost", out.stdout)

    def test_ctl_cli(self):
        e = self.emu
        crn = e.ctl("create-key", "--name", "cli-key", "--field", "crn").stdout.decode().strip()
        self.assertTrue(crn.startswith("crn:v1:bluemix:public:kms:us-south:"))
        kid = crn.split(":")[-1]
        created = e.ctlj("create-key", "--standard")
        self.assertTrue(created["extractable"])
        self.assertEqual(e.ctlj("key", kid)["name"], "cli-key")
        self.assertEqual(e.ctl("rotate", kid, "--field", "versions").stdout.count(b'"id"'), 2)
        self.assertEqual(e.ctlj("disable", kid)["state"], 2)
        self.assertEqual(e.ctlj("enable", kid)["state"], 1)       # no cool-down via ctl
        crn_r = COS_CRN % ("cli", "1")
        e.ctl("add-registration", kid, "--resource-crn", crn_r, "--description", "pg")
        p = e.ctl("delete", kid, check=False)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"PROTECTED_RESOURCE_ERR", p.stdout)
        e.ctl("delete-registration", kid, "--resource-crn", crn_r)
        self.assertEqual(e.ctlj("delete", kid)["state"], 5)
        self.assertEqual(e.ctlj("restore", kid)["state"], 1)
        e.ctl("delete", kid, "--force")
        self.assertTrue(e.ctlj("purge", kid)["purged"])
        self.assertEqual(e.ctl("key", kid, check=False).returncode, 1)
        key = e.ctl("add-apikey", "--access", "reader", "--field", "apikey").stdout.strip()
        self.assertEqual(self.iam(key.decode()).status, 200)
        e.ctl("revoke-apikey", key.decode())
        self.assertEqual(self.iam(key.decode()).status, 400)
        before = float(e.ctl("clock", "--field", "now").stdout)
        e.ctl("advance-clock", "10")
        Base.tokens.clear()
        self.assertGreaterEqual(float(e.ctl("clock", "--field", "now").stdout), before + 10)
        f = e.ctlj("fault", "--kind", "status", "--count", "1", "--status", "503",
                   "--retry-after", "1", "--path-contains", "/nowhere")
        self.assertEqual((f["kind"], f["remaining"], f["status"]), ("status", 1, 503))
        e.ctl("clear-faults")
        self.assertEqual(e.ctlj("faults"), [])
        tok = e.ctl("token", "--field", "access_token").stdout.strip()
        self.assertEqual(tok.count(b"."), 2)
        self.assertIsInstance(e.ctlj("log"), list)
        e.ctl("reset-log")
        self.assertEqual(e.ctlj("log"), [])
        self.assertEqual(e.ctl("info", "--field", "instance_id").stdout.decode().strip(),
                         self.instance)


# --------------------------------------------------------------------------------------
# Separate emulator processes: persistence, plain HTTP, curl
# --------------------------------------------------------------------------------------

class Processes(Base):

    def test_persistence_across_restart(self):
        d = os.path.join(TMP, "persist")
        emu = EmuProcess(d).start()
        global MAIN
        saved, MAIN = MAIN, emu
        try:
            Base.tokens.clear()
            k = self.create_key("durable")
            w = self.wrap(k["id"], b"persisted-dek", aad=["sys-1"])
            self.act(k["id"], "rotate")
            reader = self.emu.control("POST", "apikeys", {"access": "reader"})["apikey"]
            self.register(k["id"], COS_CRN % ("persist", "1"))
            self.advance(100)
            offset = self.emu.control("GET", "clock")["offset"]
            tok = self.token()
            with open(os.path.join(d, "ca.crt"), "rb") as f:
                ca_before = f.read()
            self.assertEqual(emu.stop(), 0)
            self.assertFalse(os.path.exists(os.path.join(d, "emulator.json")))
            emu.start()
            with open(os.path.join(d, "ca.crt"), "rb") as f:
                self.assertEqual(f.read(), ca_before)
            self.assertEqual(self.emu.control("GET", "clock")["offset"], offset)
            # a token issued before the restart is still valid
            meta = self.kp("GET", "keys/%s/metadata" % k["id"], token=tok)
            self.assertEqual(meta.status, 200, meta)
            self.assertEqual(len(self.kp("GET", "keys/%s/versions" % k["id"]).json["resources"]), 2)
            r = self.act(k["id"], "unwrap", {"ciphertext": w["ciphertext"], "aad": ["sys-1"]},
                         apikey=reader)
            self.assertEqual(base64.b64decode(r.json["plaintext"]), b"persisted-dek")
            self.assertIn("rewrappedKeyVersion", r.json)
            # rotate limit survives the restart
            self.assertKP(self.act(k["id"], "rotate"), 409, "KEY_ROTATION_NOT_PERMITTED")
            regs = self.kp("GET", "keys/%s/registrations" % k["id"]).json["resources"]
            self.assertEqual(len(regs), 1)
        finally:
            MAIN = saved
            Base.tokens.clear()
            emu.stop()

    def test_plain_http_only_when_asked(self):
        emu = EmuProcess(os.path.join(TMP, "plain"), "--http").start()
        try:
            self.assertTrue(emu.info["url"].startswith("http://127.0.0.1:"))
            self.assertIsNone(emu.info["ca_file"])
            self.assertFalse(os.path.exists(os.path.join(TMP, "plain", "ca.crt")))
            self.assertEqual(emu.request("GET", "/_emu/clock").status, 200)
        finally:
            emu.stop()

    def curl(self, *args):
        return subprocess.run(["curl", "-sS", "--max-time", "10"] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)

    @unittest.skipUnless(shutil.which("curl"), "curl not installed")
    def test_curl_end_to_end_https_verified(self):
        info, ca = self.emu.info, self.emu.info["ca_file"]
        k = self.create_key("curl")
        p = self.curl("--cacert", ca, "-X", "POST", info["url"] + "/identity/token",
                      "-H", "Content-Type: application/x-www-form-urlencoded",
                      "--data-urlencode", "grant_type=" + GRANT,
                      "--data-urlencode", "apikey@" + info["apikey_file"])
        self.assertEqual(p.returncode, 0, p.stderr)
        token = json.loads(p.stdout)["access_token"]
        headers = ["-H", "Authorization: Bearer " + token,
                   "-H", "bluemix-instance: " + info["instance_id"],
                   "-H", "Content-Type: application/json"]
        url = "%s/api/v2/keys/%s/actions/" % (info["url"], k["id"])
        dek = base64.b64encode(os.urandom(32)).decode()
        p = self.curl("--cacert", ca, "-X", "POST", url + "wrap", *headers,
                      "-d", json.dumps({"plaintext": dek, "aad": ["curl-test"]}))
        self.assertEqual(p.returncode, 0, p.stderr)
        ct = json.loads(p.stdout)["ciphertext"]
        p = self.curl("--cacert", ca, "-X", "POST", url + "unwrap", *headers,
                      "-d", json.dumps({"ciphertext": ct, "aad": ["curl-test"]}))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["plaintext"], dek)

    @unittest.skipUnless(shutil.which("curl"), "curl not installed")
    def test_curl_with_other_ca_is_refused_exit_60(self):
        d = tempfile.mkdtemp(dir=TMP)
        other = kpemu.make_ca(d, "other", "some other CA")
        p = self.curl("--cacert", other, self.emu.info["url"] + "/_emu/clock")
        self.assertEqual(p.returncode, 60, p.stderr)
        p = self.curl("--cacert", self.emu.info["ca_file"], self.emu.info["url"] + "/_emu/clock")
        self.assertEqual(p.returncode, 0, p.stderr)


# --------------------------------------------------------------------------------------

def main():
    started = time.monotonic()
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    passed = result.testsRun - failed - len(result.skipped)
    print("(%.1f s)" % (time.monotonic() - started))
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
