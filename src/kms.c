/*-------------------------------------------------------------------------
 *
 * kms.c
 *	  The Key Protect client (libcurl + json-c): the one place byok talks to
 *	  a KMS.
 *
 * A logical request (wrap, unwrap, ...) gets one correlation id, kept
 * across its attempts and written to the log.  Transient failures --
 * connection errors, timeouts, 429 and 5xx except 501 -- are retried with
 * exponential backoff and jitter (1 s doubling, capped at 30 s, honouring
 * Retry-After); TLS verification failures and other 4xx answers are final.
 * A 401 with a cached IAM token drops the token and tries once more with a
 * fresh one.  The API key, tokens and key material are never logged, and
 * buffers that held them are wiped.
 *
 * TLS is always verified: Key Protect against byok.kms_ca_file (else the
 * system CAs), IAM against the system CAs plus byok.iam_ca_file (or
 * byok.kms_ca_file).  Endpoint URLs go through libcurl's URL parser:
 * https, or plain http only for the host written exactly 127.0.0.1, [::1]
 * or localhost (the local emulator), never with user information.
 *
 * Nothing in an answer is trusted unchecked: bodies are bounded (1 MiB),
 * ciphertexts must be JSON strings of strict base64, key versions short
 * ids, and any text from the service that reaches a log line is escaped.
 *
 * Compiles for the server and for pg_byok (FRONTEND).
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#include "common/logging.h"
#else
#include "postgres.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json.h>

#include "common/base64.h"

#include "kms.h"
#include "pgcompat.h"
#include "secmem.h"

#define IAM_DEFAULT_ENDPOINT	"https://iam.cloud.ibm.com"
#define IAM_GRANT_TYPE			"urn:ibm:params:oauth:grant-type:apikey"
#define MAX_BODY				(1024 * 1024)
#define BACKOFF_CAP_S			30.0
#define MAX_CA_BUNDLE			(8 * 1024 * 1024)
#define MAX_REGISTRATIONS		1000
#define MAX_TOKEN_LIFETIME_S	(7 * 86400)

#ifdef FRONTEND
#define kms_log(...) pg_log_warning(__VA_ARGS__)
#else
#define kms_log(...) ereport(LOG, (errmsg(__VA_ARGS__)))
#endif

/* A growing response buffer. */
typedef struct KmsBuffer
{
	char	   *data;
	size_t		len;
	bool		overflow;
} KmsBuffer;

/* Response headers we care about. */
typedef struct KmsHeaders
{
	char		correlation_id[64];
	int			retry_after_s;
} KmsHeaders;

/* The cached IAM token. */
static char cached_token[16384];
static time_t cached_token_refresh_at = 0;
static bool curl_initialised = false;

static void kms_copy_text(char *dst, size_t dstlen, const char *src);

/* --- CRNs --------------------------------------------------------------- */

bool
byok_crn_parse(const char *crn, ByokCrn *out, ByokError *err)
{
	const char *expected = "crn:v1:<cname>:<ctype>:kms:<region>:a/<account>:<instance>:key:<key-id>";
	char		hint[512];
	char		fields[10][256];
	int			n = 0;
	const char *p = crn;

	snprintf(hint, sizeof(hint),
			 "byok.key_crn takes the full CRN of a Key Protect root key, of the form %s "
			 "(Key Protect shows it in the key's details).", expected);
	memset(out, 0, sizeof(*out));

	if (crn == NULL || crn[0] == '\0')
	{
		byok_error_set(err, NULL, hint, "no key CRN given");
		return false;
	}
	for (const char *c = crn; *c; c++)
		if (*c == ' ' || *c == '\t' || *c == '\n' || *c == '\r')
		{
			byok_error_set(err, "It contains white space.", hint,
						   "invalid key CRN \"%s\"", crn);
			return false;
		}
	if (strncmp(crn, "crn:", 4) != 0)
	{
		byok_error_set(err, strchr(crn, ':') == NULL ?
					   "This looks like a bare key id; a full CRN is required so that the Key Protect instance and region are known." :
					   "A CRN starts with \"crn:v1:\".",
					   hint, "invalid key CRN \"%s\"", crn);
		return false;
	}
	while (n < 10)
	{
		const char *colon = strchr(p, ':');
		size_t		len = colon ? (size_t) (colon - p) : strlen(p);

		if (len >= sizeof(fields[0]))
		{
			byok_error_set(err, "A field is too long.", hint, "invalid key CRN \"%s\"", crn);
			return false;
		}
		memcpy(fields[n], p, len);
		fields[n][len] = '\0';
		n++;
		if (colon == NULL)
			break;
		p = colon + 1;
		if (n == 10)
		{
			byok_error_set(err, "It has more than 10 colon-separated fields.", hint,
						   "invalid key CRN \"%s\"", crn);
			return false;
		}
	}
	if (n != 10)
	{
		char		detail[128];

		snprintf(detail, sizeof(detail), "It has %d colon-separated fields; a key CRN has 10.", n);
		byok_error_set(err, detail, hint, "invalid key CRN \"%s\"", crn);
		return false;
	}
	if (strcmp(fields[1], "v1") != 0 || fields[2][0] == '\0' || fields[3][0] == '\0')
	{
		byok_error_set(err, "It must start with \"crn:v1:<cname>:<ctype>:\".", hint,
					   "invalid key CRN \"%s\"", crn);
		return false;
	}
	if (strcmp(fields[4], "kms") != 0 && strcmp(fields[4], "hs-crypto") != 0)
	{
		char		detail[384];

		snprintf(detail, sizeof(detail),
				 "Its service is \"%s\"; byok needs a Key Protect (kms) or Hyper Protect Crypto Services (hs-crypto) key.",
				 fields[4]);
		byok_error_set(err, detail, hint, "invalid key CRN \"%s\"", crn);
		return false;
	}
	if (fields[5][0] == '\0')
	{
		byok_error_set(err, "Its region field is empty.", hint, "invalid key CRN \"%s\"", crn);
		return false;
	}
	if (strncmp(fields[6], "a/", 2) != 0 || fields[6][2] == '\0')
	{
		byok_error_set(err, "Its scope field must be \"a/<account id>\".", hint,
					   "invalid key CRN \"%s\"", crn);
		return false;
	}
	if (fields[7][0] == '\0')
	{
		byok_error_set(err, "Its service instance field is empty.", hint,
					   "invalid key CRN \"%s\"", crn);
		return false;
	}
	if (strcmp(fields[8], "key") != 0 || fields[9][0] == '\0')
	{
		char		detail[384];

		snprintf(detail, sizeof(detail),
				 "It names a resource of type \"%s\"%s; byok needs the CRN of a key (\"...:key:<key-id>\").",
				 fields[8][0] ? fields[8] : "(none)",
				 fields[8][0] == '\0' ? " (this is an instance CRN)" : "");
		byok_error_set(err, detail, hint, "invalid key CRN \"%s\"", crn);
		return false;
	}
	for (const char *c = fields[9]; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
			  (*c >= 'A' && *c <= 'Z') || *c == '-' || *c == '_'))
		{
			byok_error_set(err, "Its key id contains characters other than letters, digits, '-' and '_'.",
						   hint, "invalid key CRN \"%s\"", crn);
			return false;
		}

	snprintf(out->service, sizeof(out->service), "%s", fields[4]);
	snprintf(out->region, sizeof(out->region), "%s", fields[5]);
	snprintf(out->account, sizeof(out->account), "%s", fields[6] + 2);
	snprintf(out->instance, sizeof(out->instance), "%s", fields[7]);
	snprintf(out->key_id, sizeof(out->key_id), "%s", fields[9]);
	return true;
}

const char *
byok_kms_state_name(int state)
{
	switch (state)
	{
		case 0:
			return "pre-active";
		case 1:
			return "active";
		case 2:
			return "suspended";
		case 3:
			return "deactivated";
		case 5:
			return "destroyed";
	}
	return "unknown";
}

bool
kms_endpoint_url(const ByokKmsConfig *cfg, char *out, size_t outlen,
				 ByokError *err)
{
	ByokCrn		crn;
	size_t		len;

	if (!byok_crn_parse(cfg->key_crn, &crn, err))
		return false;
	if (cfg->kms_endpoint[0] != '\0')
	{
		snprintf(out, outlen, "%s", cfg->kms_endpoint);
		len = strlen(out);
		while (len > 0 && out[len - 1] == '/')
			out[--len] = '\0';
		return true;
	}
	if (strcmp(crn.service, "hs-crypto") == 0)
	{
		byok_error_set(err,
					   "Hyper Protect Crypto Services instances have their own endpoint.",
					   "Set byok.kms_endpoint to the instance's KMS endpoint, e.g. https://<instance-id>.api.<region>.hs-crypto.appdomain.cloud.",
					   "byok.kms_endpoint is required for hs-crypto keys");
		return false;
	}
	snprintf(out, outlen, "https://%s%s.kms.cloud.ibm.com",
			 cfg->private_endpoint ? "private." : "", crn.region);
	return true;
}

/* --- HTTP ---------------------------------------------------------------- */

static size_t
write_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	KmsBuffer  *buf = (KmsBuffer *) userdata;
	size_t		n = size * nmemb;
	char	   *grown;

	if (buf->len + n > MAX_BODY)
	{
		buf->overflow = true;
		return 0;
	}
	grown = realloc(buf->data, buf->len + n + 1);
	if (grown == NULL)
		return 0;
	buf->data = grown;
	memcpy(buf->data + buf->len, ptr, n);
	buf->len += n;
	buf->data[buf->len] = '\0';
	return n;
}

static size_t
header_cb(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	KmsHeaders *h = (KmsHeaders *) userdata;
	size_t		n = size * nmemb;
	char		line[256];
	size_t		len = Min(n, sizeof(line) - 1);

	memcpy(line, ptr, len);
	line[len] = '\0';
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		line[--len] = '\0';
	if (pg_strncasecmp(line, "correlation-id:", 15) == 0)
	{
		const char *v = line + 15;

		while (*v == ' ')
			v++;
		kms_copy_text(h->correlation_id, sizeof(h->correlation_id), v);
	}
	else if (pg_strncasecmp(line, "retry-after:", 12) == 0)
	{
		long		secs = strtol(line + 12, NULL, 10);

		/* bounded: the backoff is capped anyway */
		h->retry_after_s = (int) Max(0, Min(secs, 3600));
	}
	return n;
}

static void
buffer_wipe(KmsBuffer *buf)
{
	if (buf->data != NULL)
	{
		byok_wipe(buf->data, buf->len);
		free(buf->data);
	}
	buf->data = NULL;
	buf->len = 0;
}

static void
make_uuid(char out[37])
{
	uint8_t		b[16];

	if (!byok_random_bytes(b, sizeof(b)))
		memset(b, 0, sizeof(b));
	b[6] = (b[6] & 0x0F) | 0x40;
	b[8] = (b[8] & 0x3F) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9],
			 b[10], b[11], b[12], b[13], b[14], b[15]);
}

static double
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

/*
 * Copy text that came from the KMS (or from curl about the KMS) into a
 * bounded buffer for a log line: control characters, DEL and non-ASCII
 * bytes become \xNN, so an answer cannot forge log lines or hide text.
 */
static void
kms_copy_text(char *dst, size_t dstlen, const char *src)
{
	size_t		o = 0;

	if (dstlen == 0)
		return;
	for (const unsigned char *c = (const unsigned char *) (src ? src : ""); *c; c++)
	{
		if (*c < 0x20 || *c >= 0x7f)
		{
			if (o + 4 >= dstlen)
				break;
			snprintf(dst + o, dstlen - o, "\\x%02x", *c);
			o += 4;
		}
		else
		{
			if (o + 1 >= dstlen)
				break;
			dst[o++] = (char) *c;
		}
	}
	dst[o] = '\0';
}

/* The string value of a JSON field for a log line (escaped, bounded). */
static void
kms_copy_json_text(char *dst, size_t dstlen, json_object *v)
{
	if (v == NULL || json_object_is_type(v, json_type_null))
	{
		dst[0] = '\0';
		return;
	}
	kms_copy_text(dst, dstlen, json_object_get_string(v));
}

/* --- endpoint URLs ----------------------------------------------------------- */

/* The only hosts plain http may go to, exactly as they must be written. */
static const char *const loopback_hosts[] = {"127.0.0.1", "[::1]", "localhost"};

static bool
url_error(ByokError *err, const char *setting, const char *value, const char *detail)
{
	char		shown[KMS_TEXT_LEN];
	const char *hint;

	kms_copy_text(shown, sizeof(shown), value);
	if (strcmp(setting, "byok.iam_endpoint") == 0)
		hint = "Set byok.iam_endpoint to an https URL such as https://iam.cloud.ibm.com (the default) or "
			"https://private.iam.cloud.ibm.com, or to http://127.0.0.1:<port> for a local emulator.";
	else if (strcmp(setting, "byok.kms_endpoint") == 0)
		hint = "Set byok.kms_endpoint to an https URL such as https://us-south.kms.cloud.ibm.com, "
			"or to http://127.0.0.1:<port> for a local emulator, or leave it empty to derive it from byok.key_crn.";
	else
		hint = "Use an https URL, or http://127.0.0.1:<port> for a local emulator.";
	byok_error_set(err, detail, hint, "invalid value for parameter \"%s\": \"%s\"", setting, shown);
	return false;
}

/*
 * Check an endpoint URL with libcurl's URL parser.  https always; plain
 * http only when the host is written exactly 127.0.0.1, [::1] or localhost.
 * Never user information (user, password, login options), a query or a
 * fragment; the scheme must be written in lower case.  'setting' names the
 * parameter for the message.  *plain_http (may be NULL) says whether the
 * URL is loopback http.
 */
bool
kms_check_url(const char *setting, const char *value, bool *plain_http, ByokError *err)
{
	CURLU	   *u;
	CURLUcode	uc;
	char	   *host = NULL;
	char	   *part = NULL;
	bool		http;
	bool		ok = false;
	char		detail[KMS_TEXT_LEN + 256];

	if (plain_http)
		*plain_http = false;
	for (const unsigned char *c = (const unsigned char *) value; *c; c++)
		if (*c <= 0x20 || *c >= 0x7f || *c == '\\')
			return url_error(err, setting, value,
							 "It contains white space, a backslash, a control character or a character outside printable ASCII.");
	if (strncmp(value, "https://", 8) == 0)
		http = false;
	else if (strncmp(value, "http://", 7) == 0)
		http = true;
	else if (pg_strncasecmp(value, "https://", 8) == 0 || pg_strncasecmp(value, "http://", 7) == 0)
		return url_error(err, setting, value,
						 "Its scheme is not written in lower case; byok accepts exactly \"https://\" (or \"http://\" for the loopback host).");
	else
		return url_error(err, setting, value,
						 "Its scheme is not https; Key Protect and IAM are reached over https only (plain http only on the loopback host, for a local emulator).");

	u = curl_url();
	if (u == NULL)
		return url_error(err, setting, value, "out of memory");
	uc = curl_url_set(u, CURLUPART_URL, value, 0);
	if (uc != CURLUE_OK)
	{
		snprintf(detail, sizeof(detail), "libcurl cannot parse it: %s.", curl_url_strerror(uc));
		url_error(err, setting, value, detail);
		goto done;
	}
	if (curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_OPTIONS, &part, 0) == CURLUE_OK ||
		strchr(value + (http ? 7 : 8), '@') != NULL)
	{
		url_error(err, setting, value,
				  "It holds user information (\"user@host\"); byok sends the API key, tokens and key material to this URL, "
				  "and user information can disguise which host that is.");
		goto done;
	}
	if (curl_url_get(u, CURLUPART_QUERY, &part, 0) == CURLUE_OK ||
		curl_url_get(u, CURLUPART_FRAGMENT, &part, 0) == CURLUE_OK ||
		strchr(value, '?') != NULL || strchr(value, '#') != NULL)
	{
		url_error(err, setting, value, "It has a query (\"?\") or a fragment (\"#\"); an endpoint is a base URL.");
		goto done;
	}
	if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || host[0] == '\0')
	{
		url_error(err, setting, value, "It names no host.");
		goto done;
	}
	if (http)
	{
		bool		loopback = false;

		for (int i = 0; i < (int) lengthof(loopback_hosts); i++)
		{
			size_t		n = strlen(loopback_hosts[i]);
			char		next = value[7 + n];

			/* as parsed by libcurl, and as written: no other spelling */
			if (strcmp(host, loopback_hosts[i]) == 0 &&
				strncmp(value + 7, loopback_hosts[i], n) == 0 &&
				(next == '\0' || next == ':' || next == '/'))
				loopback = true;
		}
		if (!loopback)
		{
			char		shown[256];

			kms_copy_text(shown, sizeof(shown), host);
			snprintf(detail, sizeof(detail),
					 "Plain http is allowed only for the loopback hosts 127.0.0.1, [::1] and localhost, written exactly so; "
					 "libcurl reads this URL's host as \"%s\". Anything else would carry the API key, tokens and key material in clear.",
					 shown);
			url_error(err, setting, value, detail);
			goto done;
		}
	}
	if (plain_http)
		*plain_http = http;
	ok = true;
done:
	if (part)
		curl_free(part);
	if (host)
		curl_free(host);
	curl_url_cleanup(u);
	return ok;
}

bool
kms_check_config(const ByokKmsConfig *cfg, ByokError *err)
{
	if (cfg->kms_endpoint[0] != '\0' &&
		!kms_check_url("byok.kms_endpoint", cfg->kms_endpoint, NULL, err))
		return false;
	if (cfg->iam_endpoint[0] != '\0' &&
		!kms_check_url("byok.iam_endpoint", cfg->iam_endpoint, NULL, err))
		return false;
	return true;
}

/*
 * The IAM token URL from byok.iam_endpoint: a base URL (trailing slashes
 * ignored) gets /identity/token appended; a URL that already ends in
 * /identity/token is used as it is.
 */
bool
kms_iam_token_url(const ByokKmsConfig *cfg, char *out, size_t outlen, ByokError *err)
{
	const char *base = cfg->iam_endpoint[0] ? cfg->iam_endpoint : IAM_DEFAULT_ENDPOINT;
	size_t		len;
	const char *suffix = "/identity/token";
	size_t		slen = strlen(suffix);

	if (!kms_check_url("byok.iam_endpoint", base, NULL, err))
		return false;
	snprintf(out, outlen, "%s", base);
	len = strlen(out);
	while (len > 0 && out[len - 1] == '/')
		out[--len] = '\0';
	if (!(len >= slen && strcmp(out + len - slen, suffix) == 0))
		snprintf(out + len, outlen - len, "%s", suffix);
	return true;
}

/* Append the file at 'path' (a PEM bundle) to *buf.  False with errbuf set. */
static bool
append_file(const char *path, char **buf, size_t *len, bool missing_ok, char *errbuf)
{
	FILE	   *f = fopen(path, "r");
	char		chunk[8192];
	size_t		n;

	if (f == NULL)
	{
		if (missing_ok)
			return true;
		snprintf(errbuf, CURL_ERROR_SIZE, "could not open CA file \"%s\": %s", path, strerror(errno));
		return false;
	}
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
	{
		char	   *grown;

		if (*len + n > MAX_CA_BUNDLE)
		{
			fclose(f);
			snprintf(errbuf, CURL_ERROR_SIZE, "CA file \"%s\" is larger than %d bytes", path, MAX_CA_BUNDLE);
			return false;
		}
		grown = realloc(*buf, *len + n + 2);
		if (grown == NULL)
		{
			fclose(f);
			snprintf(errbuf, CURL_ERROR_SIZE, "out of memory");
			return false;
		}
		*buf = grown;
		memcpy(*buf + *len, chunk, n);
		*len += n;
	}
	fclose(f);
	if (*buf != NULL)
		(*buf)[(*len)++] = '\n';
	return true;
}

/*
 * The CAs that verify IAM: libcurl's system bundle plus byok.iam_ca_file,
 * or byok.kms_ca_file when that is empty -- additive, so a private CA for
 * Key Protect never stops the public IAM endpoint from being verified with
 * the system CAs.  *blob stays NULL when nothing is added (libcurl's
 * defaults apply); the caller frees it.
 */
static bool
iam_ca_blob(CURL *curl, const ByokKmsConfig *cfg, char **blob, size_t *len, char *errbuf)
{
	const char *extra = cfg->iam_ca_file[0] ? cfg->iam_ca_file : cfg->ca_file;
	char	   *system_bundle = NULL;

	*blob = NULL;
	*len = 0;
	if (extra[0] == '\0')
		return true;
#if LIBCURL_VERSION_NUM >= 0x075400
	if (curl_easy_getinfo(curl, CURLINFO_CAINFO, &system_bundle) != CURLE_OK)
		system_bundle = NULL;
#endif
	if (system_bundle == NULL)
		system_bundle = "/etc/ssl/certs/ca-certificates.crt";
	if (!append_file(system_bundle, blob, len, true, errbuf) ||
		!append_file(extra, blob, len, false, errbuf))
	{
		free(*blob);
		*blob = NULL;
		return false;
	}
	return true;
}

/* kms_set_wait_hooks(): how a server process is interrupted and sleeps. */
static KmsInterruptedFn kms_interrupted = NULL;
static KmsSleepFn kms_sleep = NULL;

void
kms_set_wait_hooks(KmsInterruptedFn interrupted, KmsSleepFn sleep)
{
	kms_interrupted = interrupted;
	kms_sleep = sleep;
}

/* curl's progress callback: non-zero aborts the transfer. */
static int
kms_progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow,
				curl_off_t ultotal, curl_off_t ulnow)
{
	return kms_interrupted != NULL && kms_interrupted() ? 1 : 0;
}

/*
 * One HTTP exchange.  Returns the curl code; fills http_status, body and
 * headers.  'body' may hold secrets: callers wipe it.
 */
static CURLcode
http_once(const ByokKmsConfig *cfg, bool iam, const char *method, const char *url,
		  struct curl_slist *headers, const char *payload, long *http_status,
		  KmsBuffer *body, KmsHeaders *hdrs, char *errbuf)
{
	CURL	   *curl;
	CURLcode	rc;
	ByokError	uerr;
	bool		plain_http = false;
	char	   *ca_blob = NULL;
	size_t		ca_blob_len = 0;

	/* every request URL passes the same check as the settings */
	if (!kms_check_url(iam ? "byok.iam_endpoint" : "byok.kms_endpoint", url, &plain_http, &uerr))
	{
		snprintf(errbuf, CURL_ERROR_SIZE, "%s: %s", uerr.msg, uerr.detail);
		return CURLE_URL_MALFORMAT;
	}

	if (!curl_initialised)
	{
		curl_global_init(CURL_GLOBAL_DEFAULT);
		curl_initialised = true;
	}
	curl = curl_easy_init();
	if (curl == NULL)
		return CURLE_FAILED_INIT;
	errbuf[0] = '\0';
	curl_easy_setopt(curl, CURLOPT_URL, url);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, plain_http ? "http,https" : "https");
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
	if (iam)
	{
		/* IAM: the system CAs plus byok.iam_ca_file (or byok.kms_ca_file) */
		if (!iam_ca_blob(curl, cfg, &ca_blob, &ca_blob_len, errbuf))
		{
			curl_easy_cleanup(curl);
			return CURLE_SSL_CACERT_BADFILE;
		}
		if (ca_blob != NULL)
		{
			struct curl_blob blob;

			blob.data = ca_blob;
			blob.len = ca_blob_len;
			blob.flags = CURL_BLOB_COPY;
			curl_easy_setopt(curl, CURLOPT_CAINFO_BLOB, &blob);
			free(ca_blob);
		}
	}
	else if (cfg->ca_file[0] != '\0')
		curl_easy_setopt(curl, CURLOPT_CAINFO, cfg->ca_file);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, (long) Max(cfg->timeout_s, 1));
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, (long) Min(Max(cfg->timeout_s, 1), 10));
	curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "byok/1.0");
	if (payload != NULL)
	{
		curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
		curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(payload));
	}
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, body);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, hdrs);
	if (kms_interrupted != NULL)
	{
		curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, kms_progress_cb);
		curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
	}
	rc = curl_easy_perform(curl);
	*http_status = 0;
	if (rc == CURLE_OK)
		curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, http_status);
	curl_easy_cleanup(curl);
	return rc;
}

static bool
curl_is_tls_error(CURLcode rc)
{
	return rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
		rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_CONNECT_ERROR ||
		rc == CURLE_SSL_ISSUER_ERROR || rc == CURLE_SSL_CRL_BADFILE;
}

/* Parse a Key Protect error envelope or an IAM error into res. */
static void
parse_error_body(const KmsBuffer *body, ByokKmsResult *res)
{
	json_object *root;
	json_object *v;

	if (body->data == NULL)
		return;
	root = json_tokener_parse(body->data);
	if (root == NULL)
	{
		/* not JSON: keep the first line of the text */
		size_t		len = strcspn(body->data, "\r\n");

		char		line[201];

		snprintf(line, sizeof(line), "%.*s", (int) Min(len, 200), body->data);
		kms_copy_text(res->message, sizeof(res->message), line);
		return;
	}
	if (json_object_object_get_ex(root, "errorCode", &v))	/* IAM */
	{
		kms_copy_json_text(res->reason, sizeof(res->reason), v);
		if (json_object_object_get_ex(root, "errorMessage", &v))
			kms_copy_json_text(res->message, sizeof(res->message), v);
	}
	else if (json_object_object_get_ex(root, "resources", &v) &&
			 json_object_is_type(v, json_type_array) &&
			 json_object_array_length(v) > 0)
	{
		json_object *r = json_object_array_get_idx(v, 0);
		json_object *reasons;

		if (json_object_object_get_ex(r, "errorMsg", &v))
			kms_copy_json_text(res->message, sizeof(res->message), v);
		if (json_object_object_get_ex(r, "reasons", &reasons) &&
			json_object_is_type(reasons, json_type_array) &&
			json_object_array_length(reasons) > 0)
		{
			json_object *r0 = json_object_array_get_idx(reasons, 0);

			if (json_object_object_get_ex(r0, "code", &v))
				kms_copy_json_text(res->reason, sizeof(res->reason), v);
			if (json_object_object_get_ex(r0, "message", &v))
				kms_copy_json_text(res->message, sizeof(res->message), v);
		}
	}
	json_object_put(root);
}

static ByokKmsStatus
status_for_http(long http, const char *reason)
{
	switch (http)
	{
		case 400:
			return KMS_ERR_BAD_REQUEST;
		case 401:
			return KMS_ERR_UNAUTHORIZED;
		case 403:
			return KMS_ERR_FORBIDDEN;
		case 404:
			return KMS_ERR_NOT_FOUND;
		case 409:
			return strcmp(reason, "KEY_ROTATION_NOT_PERMITTED") == 0 ?
				KMS_ERR_ROTATION_LIMIT : KMS_ERR_STATE;
		case 410:
			return KMS_ERR_DELETED;
		case 422:
			return KMS_ERR_UNPROCESSABLE;
	}
	if (http == 429 || http >= 500)
		return KMS_ERR_SERVER;
	return KMS_ERR_BAD_REQUEST;
}

static bool
http_retryable(long http)
{
	return http == 429 || (http >= 500 && http != 501);
}

/*
 * A logical request with retries.  On success (2xx) returns true with the
 * body in 'body' (caller wipes).  'what' names the action for the log.
 */
static bool
kms_request(const ByokKmsConfig *cfg, bool iam, const char *what, const char *method,
			const char *url, struct curl_slist *headers, const char *payload,
			const char *correlation_id, KmsBuffer *body, ByokKmsResult *res)
{
	double		start = mono_ms();
	int			max_attempts = Max(cfg->max_retries, 0) + 1;

	snprintf(res->url, sizeof(res->url), "%s", url);
	snprintf(res->correlation_id, sizeof(res->correlation_id), "%s", correlation_id);
	for (int attempt = 1; attempt <= max_attempts; attempt++)
	{
		KmsHeaders	hdrs = {0};
		char		errbuf[CURL_ERROR_SIZE];
		long		http = 0;
		CURLcode	rc;
		bool		retry = false;
		double		wait_s;

		buffer_wipe(body);
		body->overflow = false;
		res->attempts = attempt;
		res->reason[0] = '\0';
		res->message[0] = '\0';
		rc = http_once(cfg, iam, method, url, headers, payload, &http, body, &hdrs, errbuf);
		res->http_status = http;

		if (rc != CURLE_OK)
		{
			kms_copy_text(res->message, sizeof(res->message),
						  errbuf[0] ? errbuf : curl_easy_strerror(rc));
			if (rc == CURLE_ABORTED_BY_CALLBACK)
			{
				res->status = KMS_ERR_NETWORK;
				snprintf(res->message, sizeof(res->message), "%s",
						 "the request was interrupted (cancelled or shutting down)");
				break;
			}
			if (rc == CURLE_SSL_CACERT_BADFILE && strncmp(errbuf, "could not open CA file", 22) == 0)
				res->status = KMS_ERR_CONFIG;	/* unreadable, not unverified */
			else if (curl_is_tls_error(rc))
				res->status = KMS_ERR_TLS;
			else if (rc == CURLE_OPERATION_TIMEDOUT)
			{
				res->status = KMS_ERR_TIMEOUT;
				retry = true;
			}
			else if (rc == CURLE_WRITE_ERROR && body->overflow)
			{
				res->status = KMS_ERR_PROTOCOL;
				snprintf(res->message, sizeof(res->message),
						 "the answer is larger than %d bytes; refused", MAX_BODY);
			}
			else if (rc == CURLE_URL_MALFORMAT)
				res->status = KMS_ERR_CONFIG;
			else
			{
				res->status = KMS_ERR_NETWORK;
				retry = true;
			}
		}
		else if (http >= 200 && http < 300)
		{
			res->status = KMS_OK;
			res->duration_ms = mono_ms() - start;
			return true;
		}
		else
		{
			parse_error_body(body, res);
			res->status = status_for_http(http, res->reason);
			retry = http_retryable(http);
		}

		if (!retry || attempt == max_attempts)
			break;
		wait_s = Min(BACKOFF_CAP_S, (double) (1 << Min(attempt - 1, 5)));
		{
			uint8_t		r = 0;

			(void) byok_random_bytes(&r, 1);
			wait_s = wait_s * (0.5 + r / 510.0);	/* jitter: 50..100 % */
		}
		if (hdrs.retry_after_s > 0)
			wait_s = Min(BACKOFF_CAP_S, (double) hdrs.retry_after_s);
		kms_log("byok: Key Protect %s attempt %d of %d failed (%s%s%s), retrying in %.1f s (correlation id %s)",
				what, attempt, max_attempts,
				http ? "HTTP " : "", http ? psprintf("%ld", http) : "",
				http ? "" : res->message, wait_s, correlation_id);
		if (kms_sleep == NULL)
			pg_usleep((long) (wait_s * 1000000L));
		else if (!kms_sleep((long) (wait_s * 1000.0)))
			break;				/* interrupted: no further attempt */
	}
	res->duration_ms = mono_ms() - start;
	return false;
}

/* --- IAM ------------------------------------------------------------------ */

/* Read the API key file; refuses files others can read.  Handles a secret. */
static bool
read_api_key(const ByokKmsConfig *cfg, char *key, size_t keylen, ByokKmsResult *res)
{
	int			fd;
	struct stat st;
	ssize_t		n;
	size_t		len;
	char	   *p;

	if (cfg->api_key_file[0] == '\0')
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "byok.api_key_file is not set");
		return false;
	}
	fd = open(cfg->api_key_file, O_RDONLY);
	if (fd < 0)
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "could not open API key file \"%s\": %s",
				 cfg->api_key_file, strerror(errno));
		return false;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "API key file \"%s\" is not a regular file",
				 cfg->api_key_file);
		close(fd);
		return false;
	}
	if (st.st_uid != geteuid())
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message),
				 "API key file \"%s\" is owned by uid %u, not by the server user (uid %u)",
				 cfg->api_key_file, (unsigned) st.st_uid, (unsigned) geteuid());
		close(fd);
		return false;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message),
				 "API key file \"%s\" has group or world access (permissions %04o); it must be 0600",
				 cfg->api_key_file, (unsigned) (st.st_mode & 07777));
		close(fd);
		return false;
	}
	n = read(fd, key, keylen - 1);
	close(fd);
	if (n <= 0)
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "API key file \"%s\" is empty",
				 cfg->api_key_file);
		return false;
	}
	key[n] = '\0';
	p = key;
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	len = strcspn(p, " \t\r\n");
	memmove(key, p, len);
	key[len] = '\0';
	byok_wipe(key + len, (size_t) n - len);
	if (len == 0)
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "API key file \"%s\" is empty",
				 cfg->api_key_file);
		return false;
	}
	return true;
}

void
kms_forget_token(void)
{
	byok_wipe(cached_token, sizeof(cached_token));
	cached_token_refresh_at = 0;
}

/* Get a bearer token (cached until 80 % of its life or 60 s before expiry). */
static bool
iam_token(const ByokKmsConfig *cfg, const char *correlation_id, ByokKmsResult *res)
{
	char		apikey[4096];
	char		url[KMS_TEXT_LEN + 32];
	char	   *escaped;
	char	   *form;
	struct curl_slist *headers = NULL;
	KmsBuffer	body = {0};
	json_object *root;
	json_object *v;
	bool		ok;
	time_t		now = time(NULL);
	long		expires_in = 3600;
	time_t		expiration;

	byok_secmem_protect(cached_token, sizeof(cached_token));	/* locked, no core */
	if (cached_token[0] != '\0' && now < cached_token_refresh_at)
		return true;
	kms_forget_token();

	{
		ByokError	uerr;

		if (!kms_iam_token_url(cfg, url, sizeof(url), &uerr))
		{
			res->status = KMS_ERR_CONFIG;
			snprintf(res->message, sizeof(res->message), "%s: %s", uerr.msg, uerr.detail);
			res->iam = true;
			return false;
		}
	}
	if (!read_api_key(cfg, apikey, sizeof(apikey), res))
		return false;
	if (!curl_initialised)
	{
		curl_global_init(CURL_GLOBAL_DEFAULT);
		curl_initialised = true;
	}
	escaped = curl_easy_escape(NULL, apikey, 0);
	byok_wipe(apikey, sizeof(apikey));
	if (escaped == NULL)
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "out of memory");
		return false;
	}
	form = psprintf("grant_type=%s&apikey=%s", "urn%3Aibm%3Aparams%3Aoauth%3Agrant-type%3Aapikey", escaped);
	byok_wipe(escaped, strlen(escaped));
	curl_free(escaped);

	headers = curl_slist_append(headers, "Content-Type: application/x-www-form-urlencoded");
	headers = curl_slist_append(headers, "Accept: application/json");
	ok = kms_request(cfg, true, "IAM token", "POST", url, headers, form, correlation_id, &body, res);
	res->iam = !ok;
	curl_slist_free_all(headers);
	byok_wipe(form, strlen(form));
	pfree(form);

	if (!ok)
	{
		if (res->http_status == 400 && strcmp(res->reason, "BXNIM0415E") == 0)
			res->status = KMS_ERR_APIKEY;
		else if (res->http_status >= 400 && res->http_status < 500)
			res->status = KMS_ERR_IAM;
		buffer_wipe(&body);
		return false;
	}
	root = body.data ? json_tokener_parse(body.data) : NULL;
	if (root == NULL || !json_object_object_get_ex(root, "access_token", &v) ||
		json_object_get_string_len(v) >= (int) sizeof(cached_token) - 1 ||
		json_object_get_string_len(v) == 0)
	{
		res->status = KMS_ERR_PROTOCOL;
		snprintf(res->message, sizeof(res->message), "IAM returned no access_token");
		if (root)
			json_object_put(root);
		buffer_wipe(&body);
		return false;
	}
	snprintf(cached_token, sizeof(cached_token), "%s", json_object_get_string(v));
	/* bounded: a hostile lifetime must not pin a token for years */
	if (json_object_object_get_ex(root, "expires_in", &v) && json_object_is_type(v, json_type_int))
		expires_in = (long) Max(1, Min(json_object_get_int64(v), MAX_TOKEN_LIFETIME_S));
	expiration = now + expires_in;
	if (json_object_object_get_ex(root, "expiration", &v) && json_object_is_type(v, json_type_int) &&
		json_object_get_int64(v) > now && json_object_get_int64(v) <= now + MAX_TOKEN_LIFETIME_S)
		expiration = (time_t) json_object_get_int64(v);
	cached_token_refresh_at = expiration - Max(60, expires_in / 5);
	if (cached_token_refresh_at <= now)
		cached_token_refresh_at = now + 1;
	json_object_put(root);
	buffer_wipe(&body);
	return true;
}

/* --- Key Protect ------------------------------------------------------------ */

/*
 * Call Key Protect: method + path under /api/v2/keys/<key-id>, JSON body.
 * Retries a 401 once with a fresh token.  Body returned (caller wipes).
 */
static bool
kp_call(const ByokKmsConfig *cfg, const char *what, const char *method,
		const char *suffix, const char *payload, KmsBuffer *body,
		ByokKmsResult *res)
{
	ByokError	err = {0};
	ByokCrn		crn;
	char		base[KMS_TEXT_LEN];
	char		url[2 * KMS_TEXT_LEN];
	char		correlation_id[37];
	bool		ok = false;

	memset(res, 0, sizeof(*res));
	make_uuid(correlation_id);
	snprintf(res->correlation_id, sizeof(res->correlation_id), "%s", correlation_id);
	if (!byok_crn_parse(cfg->key_crn, &crn, &err) ||
		!kms_endpoint_url(cfg, base, sizeof(base), &err))
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "%s%s%s", err.msg,
				 err.detail[0] ? ": " : "", err.detail);
		return false;
	}
	snprintf(url, sizeof(url), "%s/api/v2/keys/%s%s", base, crn.key_id, suffix);
	if (!kms_check_url("byok.kms_endpoint", base, NULL, &err))
	{
		res->status = KMS_ERR_CONFIG;
		snprintf(res->message, sizeof(res->message), "%s: %s", err.msg, err.detail);
		return false;
	}

	for (int round = 0; round < 2; round++)
	{
		struct curl_slist *headers = NULL;
		char		h[sizeof(cached_token) + 64];
		bool		had_cached = cached_token[0] != '\0';

		if (!iam_token(cfg, correlation_id, res))
			return false;
		res->iam = false;
		snprintf(h, sizeof(h), "Authorization: Bearer %s", cached_token);
		headers = curl_slist_append(headers, h);
		byok_wipe(h, sizeof(h));
		snprintf(h, sizeof(h), "bluemix-instance: %s", crn.instance);
		headers = curl_slist_append(headers, h);
		snprintf(h, sizeof(h), "correlation-id: %s", correlation_id);
		headers = curl_slist_append(headers, h);
		headers = curl_slist_append(headers, "Accept: application/json");
		if (payload != NULL)
			headers = curl_slist_append(headers, "Content-Type: application/json");
		ok = kms_request(cfg, false, what, method, url, headers, payload, correlation_id, body, res);
		/* the slist holds the token: wipe its copy */
		for (struct curl_slist *s = headers; s != NULL; s = s->next)
			byok_wipe(s->data, strlen(s->data));
		curl_slist_free_all(headers);
		if (ok || res->http_status != 401 || !had_cached || round == 1)
			break;
		kms_forget_token();		/* expired or revoked token: try once more */
	}
	return ok;
}

/* The AAD array binding wrapped material to this cluster. */
static json_object *
aad_array(uint64_t sysid)
{
	json_object *a = json_object_new_array();
	char		s[64];

	snprintf(s, sizeof(s), "system_identifier=%llu", (unsigned long long) sysid);
	json_object_array_add(a, json_object_new_string("byok-keyring-v1"));
	json_object_array_add(a, json_object_new_string(s));
	return a;
}

/* Serialise 'obj', call, free; wipes the serialised body.  Handles keys. */
static bool
kp_call_json(const ByokKmsConfig *cfg, const char *what, const char *suffix,
			 json_object *obj, KmsBuffer *body, ByokKmsResult *res)
{
	const char *payload = json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN);
	bool		ok = kp_call(cfg, what, "POST", suffix, payload, body, res);

	byok_wipe((void *) payload, strlen(payload));
	json_object_put(obj);
	return ok;
}

static bool
protocol_error(ByokKmsResult *res, const char *what)
{
	res->status = KMS_ERR_PROTOCOL;
	snprintf(res->message, sizeof(res->message), "Key Protect's answer has no %s", what);
	return false;
}

/* A refused answer: res->message says why (fmt is ours, never KMS text). */
static bool
answer_refused(ByokKmsResult *res, const char *fmt,...) pg_attribute_printf(2, 3);

static bool
answer_refused(ByokKmsResult *res, const char *fmt,...)
{
	va_list		ap;

	res->status = KMS_ERR_PROTOCOL;
	va_start(ap, fmt);
	vsnprintf(res->message, sizeof(res->message), fmt, ap);
	va_end(ap);
	return false;
}

static bool
valid_version_id(const char *s)
{
	if (s[0] == '\0')
		return false;
	for (const char *c = s; *c; c++)
		if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
			  (*c >= 'A' && *c <= 'Z') || *c == '-' || *c == '_' || *c == '.'))
			return false;
	return true;
}

/*
 * The key version id under root.field.id.  Absent: empty, true.  Present
 * but not a short string of letters, digits, '-', '_', '.': false.
 */
static bool
copy_version(json_object *root, const char *field, char *out, size_t outlen)
{
	json_object *kv;
	json_object *id;

	if (out == NULL || outlen == 0)
		return true;
	out[0] = '\0';
	if (!json_object_object_get_ex(root, field, &kv) ||
		!json_object_is_type(kv, json_type_object) ||
		!json_object_object_get_ex(kv, "id", &id))
		return true;
	if (!json_object_is_type(id, json_type_string) ||
		(size_t) json_object_get_string_len(id) >= outlen ||
		!valid_version_id(json_object_get_string(id)))
		return false;
	snprintf(out, outlen, "%s", json_object_get_string(id));
	return true;
}

/* Strict base64 (RFC 4648 alphabet, padded, no white space). */
static bool
strict_base64(const char *s, size_t len)
{
	size_t		pad = 0;

	if (len == 0 || len % 4 != 0)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (c == '=')
		{
			if (i < len - 2)
				return false;
			pad++;
		}
		else if (pad > 0 ||
				 !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
				   (c >= '0' && c <= '9') || c == '+' || c == '/'))
			return false;
	}
	return true;
}

/*
 * Is 'v' an acceptable wrapped key: a JSON string of strict base64, at
 * most min(ctlen - 1, KMS_CIPHERTEXT_LEN - 1) characters?  Says why not.
 */
static bool
check_ciphertext(json_object *v, size_t ctlen, char *why, size_t whylen)
{
	size_t		max = Min(ctlen, (size_t) KMS_CIPHERTEXT_LEN) - 1;
	size_t		len;

	if (!json_object_is_type(v, json_type_string))
	{
		snprintf(why, whylen, "its ciphertext is a JSON %s, not a string",
				 json_type_to_name(json_object_get_type(v)));
		return false;
	}
	len = (size_t) json_object_get_string_len(v);
	if (len == 0 || len > max)
	{
		snprintf(why, whylen, "its ciphertext is %zu characters long; byok accepts 1 to %zu", len, max);
		return false;
	}
	if (!strict_base64(json_object_get_string(v), len))
	{
		snprintf(why, whylen, "its ciphertext is not valid base64");
		return false;
	}
	return true;
}

/* Parse a JSON answer body (bounded by MAX_BODY); wipes the body. */
static json_object *
parse_answer(KmsBuffer *body, ByokKmsResult *res)
{
	json_object *root = NULL;

	if (body->data != NULL && body->len > 0)
	{
		json_tokener *tok = json_tokener_new();

		if (tok != NULL)
		{
			root = json_tokener_parse_ex(tok, body->data, (int) body->len);
			if (root != NULL && json_tokener_get_error(tok) != json_tokener_success)
			{
				json_object_put(root);
				root = NULL;
			}
			json_tokener_free(tok);
		}
	}
	buffer_wipe(body);
	if (root != NULL && !json_object_is_type(root, json_type_object))
	{
		json_object_put(root);
		root = NULL;
	}
	if (root == NULL)
		answer_refused(res, "Key Protect's answer is not a complete JSON object");
	return root;
}

/*
 * Parse an answer that carries a wrapped key: 'ciphertext', and the key
 * version under 'version_field' (falling back to keyVersion).  Wipes the
 * body.
 */
static bool
ciphertext_answer(KmsBuffer *body, const char *version_field, char *ciphertext_out,
				  size_t ctlen, char *key_version_out, size_t kvlen, ByokKmsResult *res)
{
	json_object *root = parse_answer(body, res);
	json_object *v;
	char		why[256];

	if (root == NULL)
		return false;
	if (!json_object_object_get_ex(root, "ciphertext", &v))
	{
		json_object_put(root);
		return protocol_error(res, "ciphertext");
	}
	if (!check_ciphertext(v, ctlen, why, sizeof(why)))
	{
		json_object_put(root);
		return answer_refused(res, "Key Protect's answer was refused: %s", why);
	}
	snprintf(ciphertext_out, ctlen, "%s", json_object_get_string(v));
	if (!copy_version(root, version_field, key_version_out, kvlen) ||
		(key_version_out && key_version_out[0] == '\0' &&
		 !copy_version(root, "keyVersion", key_version_out, kvlen)))
	{
		byok_wipe(ciphertext_out, ctlen);
		json_object_put(root);
		return answer_refused(res, "Key Protect's answer was refused: its key version is not a version id");
	}
	json_object_put(root);
	return true;
}

bool
kms_wrap(const ByokKmsConfig *cfg, uint64_t sysid,
		 const uint8_t material[BYOK_KEY_LEN], char *ciphertext_out, size_t ctlen,
		 char *key_version_out, size_t kvlen, ByokKmsResult *res)
{
	json_object *req = json_object_new_object();
	char		b64[128];
	int			n;
	KmsBuffer	body = {0};
	bool		ok;

	n = pg_b64_encode((const ByokB64Byte *) material, BYOK_KEY_LEN, b64, sizeof(b64) - 1);
	b64[Max(n, 0)] = '\0';
	json_object_object_add(req, "plaintext", json_object_new_string(b64));
	byok_wipe(b64, sizeof(b64));
	json_object_object_add(req, "aad", aad_array(sysid));
	ok = kp_call_json(cfg, "wrap", "/actions/wrap", req, &body, res);
	if (!ok)
	{
		buffer_wipe(&body);
		return false;
	}
	return ciphertext_answer(&body, "keyVersion", ciphertext_out, ctlen,
							 key_version_out, kvlen, res);
}

bool
kms_unwrap(const ByokKmsConfig *cfg, uint64_t sysid, const char *ciphertext,
		   uint8_t material_out[BYOK_KEY_LEN], char *key_version_out, size_t kvlen,
		   char *rewrapped_ct_out, size_t rctlen,
		   char *rewrapped_version_out, size_t rvlen, ByokKmsResult *res)
{
	json_object *req = json_object_new_object();
	json_object *root;
	json_object *v;
	KmsBuffer	body = {0};
	uint8_t		raw[128];
	int			n;
	char		why[256];

	if (rewrapped_ct_out && rctlen)
		rewrapped_ct_out[0] = '\0';
	if (rewrapped_version_out && rvlen)
		rewrapped_version_out[0] = '\0';
	json_object_object_add(req, "ciphertext", json_object_new_string(ciphertext));
	json_object_object_add(req, "aad", aad_array(sysid));
	if (!kp_call_json(cfg, "unwrap", "/actions/unwrap", req, &body, res))
	{
		buffer_wipe(&body);
		return false;
	}
	root = parse_answer(&body, res);
	if (root == NULL)
		return false;
	if (!json_object_object_get_ex(root, "plaintext", &v) ||
		!json_object_is_type(v, json_type_string) ||
		json_object_get_string_len(v) > 64)
	{
		json_object_put(root);
		return protocol_error(res, "plaintext string of key material");
	}
	n = pg_b64_decode(json_object_get_string(v), json_object_get_string_len(v),
					  (ByokB64Byte *) raw, sizeof(raw));
	byok_wipe((void *) json_object_get_string(v), json_object_get_string_len(v));
	if (n != BYOK_KEY_LEN)
	{
		byok_wipe(raw, sizeof(raw));
		json_object_put(root);
		res->status = KMS_ERR_PROTOCOL;
		snprintf(res->message, sizeof(res->message),
				 "Key Protect returned %d bytes of key material; expected %d", n, BYOK_KEY_LEN);
		return false;
	}
	if (!copy_version(root, "keyVersion", key_version_out, kvlen))
	{
		byok_wipe(raw, sizeof(raw));
		json_object_put(root);
		return answer_refused(res, "Key Protect's answer was refused: its key version is not a version id");
	}
	memcpy(material_out, raw, BYOK_KEY_LEN);
	byok_wipe(raw, sizeof(raw));

	/*
	 * A ciphertext re-wrapped under a newer key version: offered only if it
	 * is well formed.  A bad one does not fail the unwrap (the key material
	 * is good); res->rewrap_refused says why it was dropped.
	 */
	if (json_object_object_get_ex(root, "ciphertext", &v) && rewrapped_ct_out)
	{
		if (!check_ciphertext(v, rctlen, why, sizeof(why)))
		{
			res->rewrap_refused = true;
			snprintf(res->message, sizeof(res->message),
					 "the re-wrapped ciphertext in Key Protect's unwrap answer was refused: %s", why);
		}
		else if (!copy_version(root, "rewrappedKeyVersion", rewrapped_version_out, rvlen))
		{
			res->rewrap_refused = true;
			snprintf(res->message, sizeof(res->message),
					 "the re-wrapped ciphertext in Key Protect's unwrap answer was refused: "
					 "its key version is not a version id");
		}
		else
			snprintf(rewrapped_ct_out, rctlen, "%s", json_object_get_string(v));
	}
	json_object_put(root);
	return true;
}

bool
kms_rewrap(const ByokKmsConfig *cfg, uint64_t sysid, const char *ciphertext,
		   char *ciphertext_out, size_t ctlen, char *key_version_out,
		   size_t kvlen, ByokKmsResult *res)
{
	json_object *req = json_object_new_object();
	KmsBuffer	body = {0};

	json_object_object_add(req, "ciphertext", json_object_new_string(ciphertext));
	json_object_object_add(req, "aad", aad_array(sysid));
	if (!kp_call_json(cfg, "rewrap", "/actions/rewrap", req, &body, res))
	{
		buffer_wipe(&body);
		return false;
	}
	return ciphertext_answer(&body, "rewrappedKeyVersion", ciphertext_out, ctlen,
							 key_version_out, kvlen, res);
}

/*
 * Rotate.  The key's version is read first: when the answer to a rotate
 * is lost (connection closed, 5xx) after Key Protect acted, the retry gets
 * 409 (one rotation per hour); if the version changed since before the
 * call, the rotation happened and this succeeds.
 */
bool
kms_rotate(const ByokKmsConfig *cfg, ByokKmsResult *res)
{
	KmsBuffer	body = {0};
	ByokKmsKeyInfo before;
	ByokKmsKeyInfo after;
	ByokKmsResult check;
	bool		ok;

	if (!kms_get_key(cfg, &before, res))
		return false;
	ok = kp_call(cfg, "rotate", "POST", "/actions/rotate", "{}", &body, res);
	buffer_wipe(&body);
	if (ok || res->http_status != 409 || res->attempts < 2 || before.key_version[0] == '\0')
		return ok;
	if (kms_get_key(cfg, &after, &check) && after.key_version[0] != '\0' &&
		strcmp(after.key_version, before.key_version) != 0)
	{
		res->status = KMS_OK;
		res->rotate_recovered = true;
		snprintf(res->message, sizeof(res->message),
				 "the answer to an earlier attempt was lost; Key Protect answered HTTP 409%s%s to the retry, "
				 "and the key's version changed from %s to %s: the rotation happened",
				 res->reason[0] ? " " : "", res->reason, before.key_version, after.key_version);
		kms_log("byok: Key Protect rotate of key %s: %s (correlation id %s)",
				cfg->key_crn, res->message, res->correlation_id);
		return true;
	}
	return false;
}

bool
kms_get_key(const ByokKmsConfig *cfg, ByokKmsKeyInfo *info, ByokKmsResult *res)
{
	KmsBuffer	body = {0};
	json_object *root;
	json_object *arr;
	json_object *k;
	json_object *v;

	memset(info, 0, sizeof(*info));
	if (!kp_call(cfg, "get key", "GET", "/metadata", NULL, &body, res))
	{
		buffer_wipe(&body);
		return false;
	}
	root = parse_answer(&body, res);
	if (root == NULL)
		return false;
	if (!json_object_object_get_ex(root, "resources", &arr) ||
		!json_object_is_type(arr, json_type_array) ||
		json_object_array_length(arr) < 1 ||
		!json_object_is_type(json_object_array_get_idx(arr, 0), json_type_object))
	{
		json_object_put(root);
		return protocol_error(res, "key");
	}
	k = json_object_array_get_idx(arr, 0);
	if (!json_object_object_get_ex(k, "state", &v) || !json_object_is_type(v, json_type_int) ||
		json_object_get_int(v) < 0 || json_object_get_int(v) > 5)
	{
		json_object_put(root);
		return answer_refused(res, "Key Protect's answer was refused: the key's state is not a number from 0 to 5");
	}
	info->state = json_object_get_int(v);
	info->deleted = json_object_object_get_ex(k, "deleted", &v) && json_object_get_boolean(v);
	if (!copy_version(k, "keyVersion", info->key_version, sizeof(info->key_version)))
	{
		json_object_put(root);
		return answer_refused(res, "Key Protect's answer was refused: its key version is not a version id");
	}
	if (json_object_object_get_ex(k, "lastRotateDate", &v))
		kms_copy_json_text(info->last_rotate, sizeof(info->last_rotate), v);
	if (json_object_object_get_ex(k, "name", &v))
		kms_copy_json_text(info->name, sizeof(info->name), v);
	json_object_put(root);
	return true;
}

bool
kms_list_registrations(const ByokKmsConfig *cfg, ByokKmsRegistration **regs,
					   int *nregs, ByokKmsResult *res)
{
	KmsBuffer	body = {0};
	json_object *root;
	json_object *arr;
	int			n;

	*regs = NULL;
	*nregs = 0;
	if (!kp_call(cfg, "list registrations", "GET", "/registrations", NULL, &body, res))
	{
		buffer_wipe(&body);
		return false;
	}
	root = parse_answer(&body, res);
	if (root == NULL)
		return false;
	if (!json_object_object_get_ex(root, "resources", &arr) ||
		!json_object_is_type(arr, json_type_array))
	{
		json_object_put(root);
		return true;			/* no registrations */
	}
	/* bounded: the first MAX_REGISTRATIONS (Key Protect pages at 200 by default) */
	n = (int) Min(json_object_array_length(arr), (size_t) MAX_REGISTRATIONS);
	*regs = calloc(Max(n, 1), sizeof(ByokKmsRegistration));
	if (*regs == NULL)
	{
		json_object_put(root);
		res->status = KMS_ERR_PROTOCOL;
		snprintf(res->message, sizeof(res->message), "out of memory");
		return false;
	}
	for (int i = 0; i < n; i++)
	{
		json_object *r = json_object_array_get_idx(arr, i);
		ByokKmsRegistration *reg = &(*regs)[i];
		json_object *v;

		if (!json_object_is_type(r, json_type_object))
			continue;
		if (json_object_object_get_ex(r, "resourceCrn", &v))
			kms_copy_json_text(reg->resource_crn, sizeof(reg->resource_crn), v);
		if (json_object_object_get_ex(r, "description", &v))
			kms_copy_json_text(reg->description, sizeof(reg->description), v);
		reg->prevent_key_deletion = json_object_object_get_ex(r, "preventKeyDeletion", &v) &&
			json_object_get_boolean(v);
		if (!copy_version(r, "keyVersion", reg->key_version, sizeof(reg->key_version)))
			snprintf(reg->key_version, sizeof(reg->key_version), "(invalid)");
		if (json_object_object_get_ex(r, "creationDate", &v))
			kms_copy_json_text(reg->created, sizeof(reg->created), v);
	}
	*nregs = n;
	json_object_put(root);
	return true;
}

/* --- what to tell the operator ------------------------------------------------ */

void
kms_describe_failure(const ByokKmsConfig *cfg, const char *action,
					 const ByokKmsResult *res, ByokError *err)
{
	char		detail[1024];
	ByokCrn		crn;
	ByokError	ignore;
	const char *instance;

	if (!byok_crn_parse(cfg->key_crn, &crn, &ignore))
		memset(&crn, 0, sizeof(crn));
	instance = crn.instance[0] ? crn.instance : "(unknown)";

	if (res->http_status != 0)
		snprintf(detail, sizeof(detail),
				 "Key CRN %s; %s answered HTTP %ld%s%s%s%s after %d attempt%s (correlation id %s).",
				 cfg->key_crn, res->url[0] ? res->url : "Key Protect", res->http_status,
				 res->reason[0] ? " " : "", res->reason,
				 res->message[0] ? ": " : "", res->message,
				 res->attempts, res->attempts == 1 ? "" : "s", res->correlation_id);
	else
		snprintf(detail, sizeof(detail),
				 "Key CRN %s; the request to %s failed after %d attempt%s: %s (correlation id %s).",
				 cfg->key_crn, res->url[0] ? res->url : "Key Protect",
				 res->attempts, res->attempts == 1 ? "" : "s",
				 res->message[0] ? res->message : "no answer", res->correlation_id);

	switch (res->status)
	{
		case KMS_OK:
			byok_error_set(err, NULL, NULL, "no error");
			break;
		case KMS_ERR_CONFIG:
			byok_error_set(err, res->message,
#ifdef FRONTEND
						   "Fix the pg_byok option that names it (--api-key-file, --kms-ca-file, --kms-endpoint, "
						   "--iam-endpoint) or, if none was given, the byok.* setting in DATADIR/postgresql.conf.",
#else
						   "Fix the byok settings in postgresql.conf.",
#endif
						   "could not %s: byok is not configured correctly", action);
			break;
		case KMS_ERR_APIKEY:
			byok_error_set(err, detail,
						   psprintf("The API key in \"%s\" does not exist or was deleted. "
									"Create an API key for a service ID that has the Reader role on Key Protect instance %s, "
									"and put it in that file (mode 0600).",
									cfg->api_key_file, instance),
						   "could not %s: IBM Cloud IAM rejected the API key", action);
			break;
		case KMS_ERR_IAM:
			byok_error_set(err, detail,
						   "Check the API key in byok.api_key_file and byok.iam_endpoint.",
						   "could not %s: IBM Cloud IAM refused to issue a token", action);
			break;
		case KMS_ERR_UNAUTHORIZED:
		case KMS_ERR_FORBIDDEN:
			byok_error_set(err, detail,
						   psprintf("Grant the database's identity (the service ID that owns the API key in \"%s\") "
									"the Reader role on Key Protect instance %s, or on the key itself, "
									"and start the server again.", cfg->api_key_file, instance),
						   "could not %s: the database is not authorized to use the Key Protect key", action);
			break;
		case KMS_ERR_NOT_FOUND:
			byok_error_set(err, detail,
						   "Check byok.key_crn. A key that does not exist, or that was purged, cannot be used; "
						   "a purged key's data is unrecoverable.",
						   "could not %s: the Key Protect key was not found", action);
			break;
		case KMS_ERR_STATE:
			byok_error_set(err, detail,
						   "The key is disabled (suspended) or not active in Key Protect. Enable it "
						   "(ibmcloud kp key enable <key-id>) and start the server again.",
						   "could not %s: the Key Protect key is not active", action);
			break;
		case KMS_ERR_ROTATION_LIMIT:
			byok_error_set(err, detail,
						   "Key Protect allows one rotation per key per hour; try again later.",
						   "could not %s: the key was rotated within the last hour", action);
			break;
		case KMS_ERR_DELETED:
			byok_error_set(err, detail,
						   "The key was deleted. Restore it in Key Protect within 30 days of the deletion "
						   "(ibmcloud kp key restore <key-id>) and start the server again.",
						   "could not %s: the Key Protect key has been deleted", action);
			break;
		case KMS_ERR_UNPROCESSABLE:
			byok_error_set(err, detail,
						   "The keyring was wrapped for another cluster (its system identifier is part of the wrapping) "
						   "or by another key. Use this cluster's own byok/keyring and the key it was wrapped with.",
						   "could not %s: Key Protect cannot unwrap this cluster's key", action);
			break;
		case KMS_ERR_TLS:
			if (res->iam)
			{
				const char *ca = cfg->iam_ca_file[0] ? cfg->iam_ca_file : cfg->ca_file;

				byok_error_set(err, detail,
							   ca[0] ?
							   psprintf("IAM's certificate does not verify against the system CAs nor against \"%s\" "
										"(byok.%s); set byok.iam_ca_file to the CA that signed the IAM endpoint's certificate.",
										ca, cfg->iam_ca_file[0] ? "iam_ca_file" : "kms_ca_file") :
							   "IAM's certificate does not verify against the system CAs; set byok.iam_ca_file to the CA "
							   "that signed it (private IAM endpoints, proxies).",
							   "could not %s: TLS verification of the IAM endpoint failed", action);
				break;
			}
			byok_error_set(err, detail,
						   cfg->ca_file[0] ?
						   psprintf("The endpoint's certificate does not verify against byok.kms_ca_file \"%s\"; "
									"point it at the CA that signed the endpoint's certificate.", cfg->ca_file) :
						   "The endpoint's certificate does not verify against the system CAs; set byok.kms_ca_file "
						   "to the CA that signed it (private endpoints, proxies).",
						   "could not %s: TLS verification of the Key Protect endpoint failed", action);
			break;
		case KMS_ERR_NETWORK:
			byok_error_set(err, detail,
						   "Check byok.kms_endpoint / byok.iam_endpoint, DNS, firewalls and proxies between "
						   "this server and Key Protect.",
						   "could not %s: Key Protect is unreachable", action);
			break;
		case KMS_ERR_TIMEOUT:
			byok_error_set(err, detail,
						   psprintf("No answer within byok.kms_timeout = %d s. Check the network path to Key Protect, "
									"or raise byok.kms_timeout.", cfg->timeout_s),
						   "could not %s: Key Protect did not answer in time", action);
			break;
		case KMS_ERR_SERVER:
			byok_error_set(err, detail,
						   "Key Protect is failing or throttling requests; retry later, and check the IBM Cloud status page.",
						   "could not %s: Key Protect returned a server error", action);
			break;
		case KMS_ERR_BAD_REQUEST:
			if (strcmp(res->reason, "KEY_PAYLOAD_REQ_ERR") == 0)
			{
				byok_error_set(err, detail,
							   psprintf("The key was created with imported key material, and Key Protect rotates such a key "
										"only with new key material, which byok does not hold. Rotate it in Key Protect "
										"with new material (ibmcloud kp key rotate %s --key-material <base64>); "
										"the byok key watchdog then rewraps the keyring under the new version.",
										crn.key_id[0] ? crn.key_id : "<key-id>"),
							   "could not %s: the Key Protect key has imported key material", action);
				break;
			}
			byok_error_set(err, detail,
						   "Check byok.kms_endpoint: it must be a Key Protect API endpoint.",
						   "could not %s: unexpected answer from Key Protect", action);
			break;
		case KMS_ERR_PROTOCOL:
			byok_error_set(err, detail,
						   "byok refuses answers that are malformed, oversized or do not unwrap to the cluster's key material; "
						   "nothing was stored. Try again later; if it persists, check that byok.kms_endpoint is a Key Protect "
						   "API endpoint and that nothing between this server and Key Protect alters its answers.",
						   "could not %s: Key Protect's answer was refused", action);
			break;
	}
}
