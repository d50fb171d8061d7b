#!/usr/bin/env bash
# A one-minute tour of byok on a fresh Debian 12, as root:
#
#   bash scripts/demo.sh
#
# It installs the dependencies, builds and installs byok, starts the local
# Key Protect emulator and walks one key through it with curl (IAM token,
# wrap, unwrap), then encrypts a new PostgreSQL cluster under that Key
# Protect root key with pg_byok, starts it with byok preloaded, writes a
# marker string into a table and shows that the marker is in no relation
# file on disk; shows the key status, rotates the key and restarts; shows
# the server refusing to start with a wrong API key; shows the key watchdog
# syncing a rotation done in Key Protect, locking the cluster when the key
# is deleted and bringing the data back when it is restored; and, for contrast,
# finds the marker in plain sight on a stock cluster.  Everything runs as
# the unprivileged user "byoktest" in a temporary directory that is removed
# at the end; the Debian cluster 15/main is left alone.  No secret is ever
# printed: API key, token and key material appear only as lengths and
# short prefixes.
#
# Run as another user it skips installing packages and byok (both must be
# there already) and runs everything as that user.
set -Eeuo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo_user=byoktest
port_enc=54329
port_stock=54330

current_step="start"
step_no=0
started=$SECONDS
if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() {
	step_no=$((step_no + 1))
	current_step="$step_no. $1"
	printf '\n%s==> %s%s\n' "$bold" "$current_step" "$plain"
	shift
	local line
	for line in "$@"; do echo "    $line"; done
}
info() { echo "    $*"; }
indent() { sed 's/^/    | /'; }
# Server log lines without their timestamp prefix, whole: long lines are
# folded at spaces (continuations indented), never cut.
loglines() {
	sed 's/^[^]]*] //' | fold -s -w 150 |
		sed -E '/^(LOG|FATAL|DETAIL|HINT|WARNING|ERROR|PANIC|STATEMENT|CONTEXT):/!s/^/      /' | indent
}
fail() {
	echo "demo.sh: FAILED at step: $current_step: $*" >&2
	exit 1
}
trap 'rc=$?; echo "demo.sh: FAILED at step: $current_step (command: $BASH_COMMAND, exit $rc)" >&2' ERR

work=
emu_pid=
secrets=
cleanup() {
	local rc=$?
	trap - ERR
	set +e
	if [[ -n $work ]]; then
		for d in "$work/pg_encrypted" "$work/pg_stock"; do
			if [[ -f $d/postmaster.pid ]]; then
				as_user "$pgbin/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1
			fi
		done
	fi
	if [[ -n $emu_pid ]] && kill -0 "$emu_pid" 2>/dev/null; then
		kill "$emu_pid" 2>/dev/null
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$emu_pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -9 "$emu_pid" 2>/dev/null
	fi
	[[ -n $secrets ]] && rm -rf "$secrets"
	if [[ -n $work && -d $work ]]; then
		if [[ $rc -ne 0 ]]; then
			echo "demo.sh: keeping $work for inspection (logs: $work/*.log)" >&2
		else
			rm -rf "$work"
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
step "Install dependencies" "Debian packages only: PostgreSQL 15 + dev headers, OpenSSL, libcurl, json-c, Python, curl."
# ---------------------------------------------------------------------------
if [[ $(id -u) -eq 0 ]]; then
	as_root=1
	bash "$repo/scripts/install-deps.sh"
else
	as_root=0
	demo_user=$(id -un)
	info "not root: skipping (assuming the packages are installed)"
fi
pgbin=$(pg_config --bindir)
user_env=(env -i "PATH=$pgbin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 TMPDIR=/tmp)

# Run a command as the demo user, with a clean environment.
as_user() {
	if [[ $as_root -eq 1 ]]; then
		runuser -u "$demo_user" -- "${user_env[@]}" HOME="$work" "$@"
	else
		"${user_env[@]}" HOME="$work" "$@"
	fi
}

# ---------------------------------------------------------------------------
step "Build and install byok" "make && make install: the server module byok.so, the extension SQL, and the offline CLI pg_byok."
# ---------------------------------------------------------------------------
cd "$repo"
make -s >/tmp/byok-demo-build.$$.log 2>&1 ||
	{ cat /tmp/byok-demo-build.$$.log; rm -f /tmp/byok-demo-build.$$.log; fail "make failed"; }
rm -f /tmp/byok-demo-build.$$.log
if [[ $as_root -eq 1 ]]; then
	make -s install >/dev/null || fail "make install failed"
	info "installed into $(pg_config --pkglibdir) and $pgbin/pg_byok"
else
	info "not root: skipping make install (using the byok installed in $(pg_config --pkglibdir))"
fi
[[ -x $pgbin/pg_byok ]] || fail "$pgbin/pg_byok is not installed"

# ---------------------------------------------------------------------------
step "Prepare an unprivileged user and a work directory" "PostgreSQL refuses to run as root, so everything from here runs as '$demo_user'."
# ---------------------------------------------------------------------------
if [[ $as_root -eq 1 ]] && ! id -u "$demo_user" >/dev/null 2>&1; then
	useradd --create-home --shell /bin/bash "$demo_user"
	info "created user $demo_user"
fi
work=$(mktemp -d /tmp/byok-demo.XXXXXX)
mkdir -p "$work/kms"
cp -a "$repo/test/kms/." "$work/kms/"
[[ $as_root -eq 1 ]] && chown -R "$demo_user:" "$work"
# From here on everything runs in the work directory: the demo user may not
# enter the checkout (e.g. /root/byok), and every PostgreSQL program started
# there would first complain that it cannot change back into it.
cd "$work"
info "work directory: $work"

# ---------------------------------------------------------------------------
step "Start the Key Protect emulator" "A local stand-in for IBM Key Protect and IAM: HTTPS on loopback, with a CA it made itself."
# ---------------------------------------------------------------------------
[[ -f $work/kms/kpemu.py ]] || fail "test/kms/kpemu.py is missing"
emu=$work/emu
as_user mkdir -p "$emu"
# "exec" keeps the emulator's PID the one we record, so we can stop it.
# shellcheck disable=SC2016 # $$, $1, $2 belong to the inner shell
as_user bash -c 'echo $$ > "$1/emulator.pid"; exec python3 "$2" serve --state-dir "$1" --port 0' \
	_ "$emu" "$work/kms/kpemu.py" >"$work/emulator.log" 2>&1 &
for _ in $(seq 1 300); do
	[[ -z $emu_pid && -s $emu/emulator.pid ]] && emu_pid=$(cat "$emu/emulator.pid")
	[[ -s $emu/emulator.json ]] && python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$emu/emulator.json" 2>/dev/null && break
	if [[ -n $emu_pid ]] && ! kill -0 "$emu_pid" 2>/dev/null; then
		cat "$work/emulator.log" >&2
		fail "the emulator exited"
	fi
	sleep 0.1
done
[[ -s $emu/emulator.json ]] || { cat "$work/emulator.log" >&2; fail "no emulator.json after 30 s"; }

# Read a field of emulator.json; several names are accepted for each.
emu_field() {
	python3 - "$emu/emulator.json" "$@" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
for name in sys.argv[2:]:
    v = info
    for part in name.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    if v not in (None, ""):
        print(v)
        break
PY
}
kp_url=$(emu_field kms_url url base_url kms_endpoint endpoint)
iam_url=$(emu_field iam_token_url token_url iam_url iam_endpoint)
ca_file=$(emu_field ca_file ca_cert cafile ca tls.ca_file)
instance_id=$(emu_field instance_id instance bluemix_instance)
apikey_file=$emu/apikey
[[ -n $kp_url ]] || fail "emulator.json has no Key Protect URL"
[[ -n $ca_file && -f $ca_file ]] || fail "emulator.json names no CA file"
[[ -f $apikey_file ]] || fail "no API key file $apikey_file"
# An IAM base URL without a path gets the documented token path.
[[ -n $iam_url ]] || iam_url=$kp_url
[[ $iam_url == */identity/token || $iam_url == */oidc/token ]] || iam_url=${iam_url%/}/identity/token
info "Key Protect API: $kp_url   IAM: $iam_url"
info "CA certificate:  $ca_file (curl verifies the emulator's certificate against it)"
info "API key file:    $apikey_file ($(tr -d '\n' <"$apikey_file" | wc -c) characters, not shown)"

secrets=$(mktemp -d)   # private scratch space for token and key material
chmod 700 "$secrets"

# curl against the emulator: METHOD URL [BODY-FILE]; the response body goes
# to $secrets/resp and the HTTP status is printed.
kp_curl() {
	local method=$1 url=$2 body=${3:-}
	local -a args=(-sS --cacert "$ca_file" -o "$secrets/resp" -w '%{http_code}' -X "$method")
	[[ -f $secrets/headers ]] && args+=(-H "@$secrets/headers")
	[[ -n $body ]] && args+=(-H 'Content-Type: application/json' --data-binary "@$body")
	curl "${args[@]}" "$url"
}
json() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); exec(sys.argv[2])' "$secrets/resp" "$1"; }

# ---------------------------------------------------------------------------
step "IAM: exchange the API key for an access token" "POST $iam_url (grant_type=urn:ibm:params:oauth:grant-type:apikey)"
# ---------------------------------------------------------------------------
# The API key goes in a form body read from a 0600 file, never on a command line.
umask 077
{
	printf 'grant_type=urn%%3Aibm%%3Aparams%%3Aoauth%%3Agrant-type%%3Aapikey&apikey='
	python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(open(sys.argv[1]).read().strip(), safe=""), end="")' "$apikey_file"
} >"$secrets/form"
status=$(curl -sS --cacert "$ca_file" -o "$secrets/resp" -w '%{http_code}' -X POST \
	-H 'Content-Type: application/x-www-form-urlencoded' -H 'Accept: application/json' \
	--data-binary "@$secrets/form" "$iam_url")
[[ $status == 200 ]] || fail "IAM token exchange answered HTTP $status: $(head -c 300 "$secrets/resp")"
token=$(json 'print(d["access_token"])')
info "HTTP $status: $(json 'print(d.get("token_type","?"))') token ${token:0:6}... (${#token} characters), expires in $(json 'print(d.get("expires_in","?"))') s"
{
	echo "Authorization: Bearer $token"
	[[ -n $instance_id ]] && echo "bluemix-instance: $instance_id"
	echo "Accept: application/json"
} >"$secrets/headers"
unset token

# ---------------------------------------------------------------------------
step "Key Protect: create a root key" "POST $kp_url/api/v2/keys (extractable=false: a root key never leaves Key Protect)"
# ---------------------------------------------------------------------------
cat >"$secrets/body" <<'EOF'
{"metadata":{"collectionType":"application/vnd.ibm.kms.key+json","collectionTotal":1},
 "resources":[{"type":"application/vnd.ibm.kms.key+json","name":"byok-demo-root","extractable":false}]}
EOF
status=$(kp_curl POST "$kp_url/api/v2/keys" "$secrets/body")
[[ $status == 201 || $status == 200 ]] || fail "create key answered HTTP $status: $(head -c 300 "$secrets/resp")"
key_id=$(json 'print(d["resources"][0]["id"])')
key_crn=$(json 'print(d["resources"][0].get("crn",""))')
info "HTTP $status: key $key_id"
[[ -n $key_crn ]] && info "CRN: $key_crn"

# ---------------------------------------------------------------------------
step "Key Protect: wrap a data key" "A fresh 32-byte data key, wrapped by the root key, bound to a context (AAD) naming its owner."
# ---------------------------------------------------------------------------
openssl rand 32 >"$secrets/dek"
python3 - "$secrets/dek" >"$secrets/body" <<'PY'
import base64, json, sys
dek = open(sys.argv[1], "rb").read()
print(json.dumps({"plaintext": base64.b64encode(dek).decode(), "aad": ["byok-demo-cluster"]}))
PY
status=$(kp_curl POST "$kp_url/api/v2/keys/$key_id/actions/wrap" "$secrets/body")
[[ $status == 200 ]] || fail "wrap answered HTTP $status: $(head -c 300 "$secrets/resp")"
json 'open(sys.argv[1]+".wrapped","w").write(d["ciphertext"])'
wrapped=$(cat "$secrets/resp.wrapped")
info "HTTP $status: wrapped key ${wrapped:0:12}... (${#wrapped} base64 characters), key version $(json 'print(d.get("keyVersion",{}).get("id","?"))')"
info "with Key Protect holding the root key, a wrapped key like this is all byok keeps on disk (in its keyring)"

# ---------------------------------------------------------------------------
step "Key Protect: unwrap it again" "Same key, same AAD: the original 32 bytes come back."
# ---------------------------------------------------------------------------
python3 - "$secrets/resp.wrapped" byok-demo-cluster >"$secrets/body" <<'PY'
import json, sys
print(json.dumps({"ciphertext": open(sys.argv[1]).read(), "aad": [sys.argv[2]]}))
PY
status=$(kp_curl POST "$kp_url/api/v2/keys/$key_id/actions/unwrap" "$secrets/body")
[[ $status == 200 ]] || fail "unwrap answered HTTP $status: $(head -c 300 "$secrets/resp")"
json 'import base64; open(sys.argv[1]+".dek","wb").write(base64.b64decode(d["plaintext"]))'
cmp -s "$secrets/dek" "$secrets/resp.dek" || fail "unwrapped key differs from the original"
info "HTTP $status: $(wc -c <"$secrets/resp.dek") bytes, identical to the key we wrapped (not shown)"

python3 - "$secrets/resp.wrapped" some-other-cluster >"$secrets/body" <<'PY'
import json, sys
print(json.dumps({"ciphertext": open(sys.argv[1]).read(), "aad": [sys.argv[2]]}))
PY
status=$(kp_curl POST "$kp_url/api/v2/keys/$key_id/actions/unwrap" "$secrets/body")
[[ $status == 4* ]] || fail "unwrap with the wrong AAD answered HTTP $status, expected a refusal"
info "with another cluster's AAD: HTTP $status, refused -- a wrapped key only opens for its own cluster"
rm -f "$secrets/dek" "$secrets/resp.dek"
umask 022

# ---------------------------------------------------------------------------
step "Create a cluster and encrypt it under the Key Protect key" "initdb, byok.* settings naming the key's CRN, then 'pg_byok enable' on the stopped cluster: every relation file is encrypted in place."
# ---------------------------------------------------------------------------
pgdata=$work/pg_encrypted
sockdir=$work/sock
as_user mkdir -p "$sockdir"
as_user initdb -D "$pgdata" -A trust -N --locale=C.UTF-8 >"$work/initdb-encrypted.log" ||
	{ cat "$work/initdb-encrypted.log"; fail "initdb failed"; }
server_conf() {
	cat <<EOF

# added by scripts/demo.sh
port = $1
listen_addresses = ''
unix_socket_directories = '$sockdir'
EOF
}
kms_conf() {
	cat <<EOF
byok.key_crn = '$key_crn'
byok.kms_endpoint = '$kp_url'
byok.iam_endpoint = '${iam_url%/identity/token}'
byok.api_key_file = '$apikey_file'
byok.kms_ca_file = '$ca_file'
byok.kms_max_retries = 1
byok.kms_poll_interval = 1
EOF
}
{
	server_conf "$port_enc"
	kms_conf
} | as_user tee -a "$pgdata/postgresql.conf" >/dev/null
kms_conf | indent
if ! as_user pg_byok enable -D "$pgdata" 2>&1 | indent; then
	fail "pg_byok enable failed"
fi
[[ -f $pgdata/byok/keyring ]] || fail "no keyring at $pgdata/byok/keyring"
info "keyring: $pgdata/byok/keyring ($(stat -c %s "$pgdata/byok/keyring") bytes: the key material wrapped by Key Protect, nothing else)"
as_user pg_byok status -D "$pgdata" 2>&1 | grep -E 'encryption|provider|key CRN|key version' | indent

# ---------------------------------------------------------------------------
step "Start it with byok preloaded" "shared_preload_libraries = 'byok', port $port_enc, Unix socket only (in $sockdir): the postmaster unwraps the key through Key Protect before anything else starts."
# ---------------------------------------------------------------------------
echo "shared_preload_libraries = 'byok'" | as_user tee -a "$pgdata/postgresql.conf" >/dev/null
as_user pg_ctl -D "$pgdata" -l "$work/pg_encrypted.log" -w start >/dev/null ||
	{ tail -n 30 "$work/pg_encrypted.log" >&2; fail "the encrypted cluster did not start"; }
grep -E 'byok audit|encryption active' "$work/pg_encrypted.log" | loglines
info "running: $(as_user psql -X -A -t -h "$sockdir" -p "$port_enc" -d postgres -c 'SELECT version()')"

psql_enc() { as_user psql -X -v ON_ERROR_STOP=1 -h "$sockdir" -p "$port_enc" -d postgres "$@"; }
if ! psql_enc -c 'CREATE EXTENSION byok;' -c 'SELECT byok_version();' 2>&1 | indent; then
	fail "CREATE EXTENSION byok / SELECT byok_version() failed"
fi

# ---------------------------------------------------------------------------
marker="BYOKMARK_$(openssl rand -hex 8)"
step "Write a secret and look for it on disk" "A table full of the marker '$marker', then CHECKPOINT so every page is written to its file."
# ---------------------------------------------------------------------------
workload="CREATE TABLE demo_secret (id int PRIMARY KEY, note text);
INSERT INTO demo_secret SELECT g, '$marker' FROM generate_series(1, 1000) g;
CHECKPOINT;"
psql_enc -q -c "$workload"
info "SELECT through byok: $(psql_enc -A -t -c "SELECT count(*) || ' rows, e.g. ' || min(note) FROM demo_secret")"
info "relation file: $(psql_enc -A -t -c "SELECT pg_relation_filepath('demo_secret')")"

# Files under DIR/SUB that contain the marker, as "path:count" (grep -r -c).
marker_files() {
	(
		cd "$1" || exit 1
		grep -r -c -a -F "$marker" "$2" 2>/dev/null | grep -v ':0$'
	) || true
}
hits=$(marker_files "$pgdata" base)
nfiles=$(find "$pgdata/base" -type f | wc -l)
if [[ -n $hits ]]; then
	printf '%s\n' "$hits" | indent
	fail "the marker is readable in relation files of the encrypted cluster"
fi
info "grep -r -c over base/ ($nfiles files): no file contains the marker"
wal_hits=$(marker_files "$pgdata" pg_wal)
if [[ -n $wal_hits ]]; then
	printf '%s\n' "$wal_hits" | indent
	fail "the marker is readable in WAL segments of the encrypted cluster"
fi
info "grep -r -c over pg_wal/ ($(find "$pgdata/pg_wal" -maxdepth 1 -type f | wc -l) files): no WAL segment contains the marker either"

# ---------------------------------------------------------------------------
step "Key status and rotation" "byok_status() reads the key's state; byok_rotate_key() rotates the root key in Key Protect and rewraps the keyring under the new version."
# ---------------------------------------------------------------------------
psql_enc -x -c "SELECT enabled, provider, key_state, key_version, kms_endpoint, last_kms_contact, cipher, cipher_implementation FROM byok_status()" | indent
wrapped_before=$(grep '^wrapped_key' "$pgdata/byok/keyring" | cut -c15-40)
new_version=$(psql_enc -A -t -c "SELECT byok_rotate_key()")
wrapped_after=$(grep '^wrapped_key' "$pgdata/byok/keyring" | cut -c15-40)
[[ $wrapped_before != "$wrapped_after" ]] || fail "the keyring was not rewrapped"
info "rotated: key version is now $new_version; keyring ciphertext ${wrapped_before}... -> ${wrapped_after}..."
psql_enc -A -t -c "SELECT 'byok_verify_key(): ' || CASE WHEN ok THEN 'ok' ELSE message END FROM byok_verify_key()" | indent
as_user pg_ctl -D "$pgdata" -l "$work/pg_encrypted.log" -m fast -w restart >/dev/null ||
	{ tail -n 30 "$work/pg_encrypted.log" >&2; fail "restart after rotation failed"; }
info "restarted under the new key version: $(psql_enc -A -t -c "SELECT count(*) || ' rows' FROM demo_secret")"

# ---------------------------------------------------------------------------
step "Without authorization the server refuses to start" "A wrong API key: IAM refuses it, and the postmaster stops with a message that says what to fix."
# ---------------------------------------------------------------------------
as_user pg_ctl -D "$pgdata" -m fast -w stop >/dev/null
as_user bash -c 'umask 077; echo "not-a-valid-api-key" > "$1"' _ "$work/wrong.apikey"
echo "byok.api_key_file = '$work/wrong.apikey'" | as_user tee -a "$pgdata/postgresql.conf" >/dev/null
logsize=$(stat -c %s "$work/pg_encrypted.log")
if as_user pg_ctl -D "$pgdata" -l "$work/pg_encrypted.log" -w start >/dev/null 2>&1; then
	fail "the server started with a wrong API key"
fi
tail -c +"$((logsize + 1))" "$work/pg_encrypted.log" | grep -E 'FATAL|DETAIL|HINT' | loglines
echo "byok.api_key_file = '$apikey_file'" | as_user tee -a "$pgdata/postgresql.conf" >/dev/null
as_user pg_ctl -D "$pgdata" -l "$work/pg_encrypted.log" -w start >/dev/null ||
	{ tail -n 30 "$work/pg_encrypted.log" >&2; fail "the server did not start with the right API key"; }
info "right API key back: started, $(psql_enc -A -t -c "SELECT count(*) || ' rows' FROM demo_secret")"

# ---------------------------------------------------------------------------
step "The key watchdog follows the key's life" "Key Protect rotates the key by itself; the watchdog (polling every second here) syncs it; then, right after commits that no checkpoint covers, the key is deleted: the cluster locks; the key is restored: recovery replays those commits from the encrypted WAL."
# ---------------------------------------------------------------------------
kpctl() { as_user python3 "$work/kms/kpemu.py" ctl --state-dir "$emu" "$@"; }
key_uuid=${key_crn##*:}
before=$(psql_enc -A -t -c "SELECT key_version FROM byok_status()")
kpctl rotate "$key_uuid" >/dev/null || fail "rotation in the emulator failed"
for _ in $(seq 1 50); do
	now=$(psql_enc -A -t -c "SELECT key_version FROM byok_status()")
	[[ $now != "$before" ]] && break
	sleep 0.1
done
[[ $now != "$before" ]] || fail "the watchdog did not sync the rotation"
grep -E 'syncing KMS state: key' "$work/pg_encrypted.log" | tail -1 | loglines
info "rotated in Key Protect: the watchdog rewrapped the keyring under $now"

rows_before=$(psql_enc -A -t -c "SELECT count(*) FROM demo_secret")
# A checkpoint, then commits after it: until the next checkpoint, the WAL is
# the only thing that makes them durable.
psql_enc -q -c "CHECKPOINT"
redo_lsn=$(psql_enc -A -t -c "SELECT redo_lsn FROM pg_control_checkpoint()")
psql_enc -q -c "CREATE TABLE demo_late (id int PRIMARY KEY, note text)"
for i in 1 2 3 4 5; do
	psql_enc -q -c "INSERT INTO demo_late VALUES ($i, 'commit $i after the last checkpoint')"
done
late_lsn=$(psql_enc -A -t -c "SELECT pg_current_wal_lsn()")
info "last checkpoint: redo point $redo_lsn; then 5 separate commits (table demo_late), WAL now at $late_lsn"
pm_pid=$(head -1 "$pgdata/postmaster.pid")
kpctl delete "$key_uuid" --force >/dev/null || fail "deleting the key in the emulator failed"
for _ in $(seq 1 100); do kill -0 "$pm_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pm_pid" 2>/dev/null && fail "the cluster did not lock after the key was deleted"
grep -E 'LOCKED' "$work/pg_encrypted.log" | tail -1 | loglines
info "key deleted in Key Protect: the cluster locked (immediate shutdown, no process left, no checkpoint written)"
as_user pg_controldata -D "$pgdata" | grep -E "cluster state|REDO location" | indent
[[ $(as_user pg_controldata -D "$pgdata" | sed -n "s/^Latest checkpoint's REDO location: *//p") == "$redo_lsn" ]] ||
	fail "a checkpoint was written after the commits: the step would prove nothing"
as_user pg_byok status -D "$pgdata" 2>&1 | head -2 | indent
logsize=$(stat -c %s "$work/pg_encrypted.log")
if as_user pg_ctl -D "$pgdata" -l "$work/pg_encrypted.log" -w start >/dev/null 2>&1; then
	fail "the server started while its key is deleted"
fi
tail -c +"$((logsize + 1))" "$work/pg_encrypted.log" | grep -E 'FATAL|HINT' | loglines
kpctl advance-clock 31 >/dev/null
kpctl restore "$key_uuid" >/dev/null || fail "restoring the key in the emulator failed"
as_user pg_ctl -D "$pgdata" -l "$work/pg_encrypted.log" -w start >/dev/null ||
	{ tail -n 30 "$work/pg_encrypted.log" >&2; fail "the server did not start after the key was restored"; }
grep -E 'cluster unlocked|redo starts at|redo done at' "$work/pg_encrypted.log" | tail -3 | loglines
rows_after=$(psql_enc -A -t -c "SELECT count(*) FROM demo_secret")
[[ $rows_after == "$rows_before" ]] || fail "rows before the lock: $rows_before, after: $rows_after"
late_after=$(psql_enc -A -t -c "SELECT count(*) FROM demo_late")
[[ $late_after == 5 ]] || fail "commits after the last checkpoint: 5 before the lock, $late_after after"
info "key restored: unlocked; crash recovery replayed the encrypted WAL from $redo_lsn:"
info "all $rows_after rows of demo_secret and all 5 commits made after the last checkpoint are back"
psql_enc -A -t -c "SELECT '  ' || id || ': ' || note FROM demo_late ORDER BY id" | indent

# ---------------------------------------------------------------------------
step "For contrast: the same on a stock cluster" "No byok, port $port_stock."
# ---------------------------------------------------------------------------
stock=$work/pg_stock
as_user initdb -D "$stock" -A trust -N --locale=C.UTF-8 >"$work/initdb-stock.log" ||
	{ cat "$work/initdb-stock.log"; fail "initdb (stock) failed"; }
server_conf "$port_stock" | as_user tee -a "$stock/postgresql.conf" >/dev/null
as_user pg_ctl -D "$stock" -l "$work/pg_stock.log" -w start >/dev/null ||
	{ tail -n 30 "$work/pg_stock.log" >&2; fail "the stock cluster did not start"; }
as_user psql -X -q -v ON_ERROR_STOP=1 -h "$sockdir" -p "$port_stock" -d postgres -c "$workload"
hits=$(marker_files "$stock" base; marker_files "$stock" pg_wal)
[[ -n $hits ]] || fail "the marker was not found on the stock cluster: the comparison proves nothing"
printf '%s\n' "$hits" | indent
info "grep -r -c over base/ and pg_wal/ (file:matching lines): the marker is in plain sight in the stock cluster's files"

# ---------------------------------------------------------------------------
step "Stop everything and clean up"
# ---------------------------------------------------------------------------
as_user pg_ctl -D "$pgdata" -m fast -w stop >/dev/null
as_user pg_ctl -D "$stock" -m fast -w stop >/dev/null
info "both clusters stopped; the emulator and $work go next"
current_step="done"
echo
echo "demo.sh: all steps passed in $((SECONDS - started)) s"
