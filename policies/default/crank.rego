# The built-in defaults of crank-security, as Rego. Rego v1 syntax: runs on regorus
# and on OPA (0.x with the rego.v1 import, 1.x natively).
#
# Use it as a starting point: copy this directory, edit, and point the CA
# (`crank ca serve --policy-dir DIR`) and workers (`CRANK_POLICY_DIR=DIR`) at it.
# Input and output of each rule: policies/README.md.
package crank

import rego.v1

allowed_key_types := {"ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072"}

# can_issue_certificate ---------------------------------------------------------
#
# Written with sets computed once per decision rather than helper functions called
# per requested name: the same decisions, in a fraction of the evaluation time.

deny contains msg if {
	not input.key_type in allowed_key_types
	msg := sprintf("key type %s is not allowed", [input.key_type])
}

deny contains msg if {
	some name in input.requested_dns_sans
	not name in own_dns_names
	not name in granted
	not name in under_allowed_suffix
	msg := sprintf("DNS name %q is not allowed for worker %q", [name, input.worker_id])
}

deny contains msg if {
	some ip in input.requested_ip_sans
	not net.cidr_contains("127.0.0.0/8", ip)
	ip != "::1"
	not ip in granted
	msg := sprintf("IP address %s is not allowed for worker %q", [ip, input.worker_id])
}

# Names every worker may have: its id, <worker-id>.<trust-domain> and localhost.
own_dns_names := {input.worker_id, concat(".", [input.worker_id, input.trust_domain]), "localhost"}

# Names and addresses granted by `san:<name>` capabilities in the join token.
granted contains trim_prefix(cap, "san:") if {
	some cap in input.capabilities
	startswith(cap, "san:")
}

# Extension point: other policy files may add domain suffixes under which any name is
# allowed (see policies/examples/capability_sans.rego).
under_allowed_suffix contains name if {
	some name in input.requested_dns_sans
	some suffix in data.crank.allowed_suffixes
	endswith(name, concat("", [".", suffix]))
}

can_issue_certificate := {"allow": true} if count(deny) == 0

can_issue_certificate := {"allow": false, "reason": concat("; ", sort(deny))} if count(deny) > 0

# certificate_validity_period ------------------------------------------------------

default certificate_validity_period := 86400

# should_renew_certificate -----------------------------------------------------------

lifetime := input.not_after - input.issued_at

# Relative windows, unless a policy file defines `absolute_windows` (see
# policies/examples/absolute_renewal_windows.rego).
default absolute_windows := false

should_renew_certificate := {"renew": true, "expiring_soon": true} if {
	not absolute_windows
	lifetime <= 0
}

should_renew_certificate := {
	"renew": (input.now - input.issued_at) >= ((lifetime * 2) / 3) + ((lifetime * input.jitter) / 20),
	"expiring_soon": (input.not_after - input.now) < lifetime / 4,
} if {
	not absolute_windows
	lifetime > 0
}

# revoke_certificate ---------------------------------------------------------------

default revoke_certificate := true
