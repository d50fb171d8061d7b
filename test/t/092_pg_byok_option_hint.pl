
# Copyright (c) byok contributors

# pg_byok's hint for a KMS setting it cannot use names the command-line
# option that gave it, not only postgresql.conf: an API key file or a CA
# file that the user running pg_byok cannot open (the Key Protect emulator
# run as root keeps both in a 0700 directory, docs/emulator.md) is "not
# configured correctly", with the file and the OS reason in the DETAIL.
# Neither reaches the network: the API key and the IAM CA bundle are read
# before the first request.  The keyring is not written.

use strict;
use warnings;

use Cwd qw(abs_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use ByokTest;

my $node = new_stock_node('hint');
my $pgdata = $node->data_dir;
my $crn = 'crn:v1:bluemix:public:kms:us-south:a/0123456789abcdef0123456789abcdef:'
  . '1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5:key:3ce59dea-6fd9-430f-9519-87343a5719c2';
my @kms = ('--key-crn', $crn, '--kms-endpoint', 'https://127.0.0.1:9',
	'--iam-endpoint', 'https://127.0.0.1:9', '--kms-timeout', '2');

my $dir = abs_path(PostgreSQL::Test::Utils::tempdir());
my $apikey = "$dir/apikey";
open(my $fh, '>', $apikey) or die $!;
print $fh 'not-a-real-api-key';
close $fh;
chmod 0600, $apikey;
my $missing = "$dir/no-such-dir/file";

my $option_hint = qr/^pg_byok: hint: Fix the pg_byok option that names it \(--api-key-file, --kms-ca-file, --kms-endpoint, --iam-endpoint\) or, if none was given, the byok\.\* setting in DATADIR\/postgresql\.conf\.$/m;

my ($rc, $out, $err) = pg_byok('enable', '-D', $pgdata, @kms, '--api-key-file', $missing);
isnt($rc, 0, 'enable with an API key file it cannot open fails');
like($err, qr/^pg_byok: error: could not wrap the cluster key: byok is not configured correctly$/m,
	'API key file: not configured correctly');
like($err, qr/^pg_byok: detail: could not open API key file "\Q$missing\E": No such file or directory$/m,
	'API key file: the DETAIL names the file and the reason');
like($err, $option_hint, 'API key file: the HINT names the pg_byok option');
unlike($err, qr/^pg_byok: hint: Fix the byok settings in postgresql\.conf\.$/m,
	'API key file: the HINT does not blame postgresql.conf alone');

($rc, $out, $err) = pg_byok('enable', '-D', $pgdata, @kms, '--api-key-file', $apikey,
	'--kms-ca-file', $missing);
isnt($rc, 0, 'enable with a CA file it cannot open fails');
like($err, qr/^pg_byok: error: could not wrap the cluster key: byok is not configured correctly$/m,
	'CA file: not configured correctly (not a TLS verification failure)');
like($err, qr/^pg_byok: detail: could not open CA file "\Q$missing\E": No such file or directory$/m,
	'CA file: the DETAIL names the file and the reason');
like($err, $option_hint, 'CA file: the HINT names the pg_byok option');

ok(!-e "$pgdata/byok/keyring", 'no keyring was written');

done_testing();
