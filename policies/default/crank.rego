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

deny contains msg if {
	not input.key_type in allowed_key_types
	msg := sprintf("key type %s is not allowed", [input.key_type])
}

deny contains msg if {
	some name in input.requested_dns_sans
	not dns_allowed(name)
	msg := sprintf("DNS name %q is not allowed for worker %q", [name, input.worker_id])
}

deny contains msg if {
	some ip in input.requested_ip_sans
	not ip_allowed(ip)
	msg := sprintf("IP address %s is not allowed for worker %q", [ip, input.worker_id])
}

dns_allowed(name) if name == input.worker_id

dns_allowed(name) if name == sprintf("%s.%s", [input.worker_id, input.trust_domain])

dns_allowed(name) if name == "localhost"

dns_allowed(name) if granted(name)

# Extension point: other policy files may add domain suffixes under which any name is
# allowed (see policies/examples/capability_sans.rego).
dns_allowed(name) if {
	some suffix in data.crank.allowed_suffixes
	endswith(name, concat("", [".", suffix]))
}

ip_allowed(ip) if net.cidr_contains("127.0.0.0/8", ip)

ip_allowed(ip) if ip == "::1"

ip_allowed(ip) if granted(ip)

granted(name) if sprintf("san:%s", [name]) in input.capabilities

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
