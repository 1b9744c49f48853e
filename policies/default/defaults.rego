# The built-in defaults of crank-security, as Rego. Rego v1 syntax: runs on regorus
# and on OPA (0.x with the rego.v1 import, 1.x natively).
#
# This is package `crank.defaults`. A policy directory layers on it: the rules of
# package `crank` in the directory's files come first, hook by hook, and where they
# define nothing for a hook (or their rule is undefined for the input), the rule here
# decides. So a file may define a single hook, or only add to an extension point that
# the rules here consult:
#
#   data.crank.deny               more reasons to refuse a certificate (a set of strings)
#   data.crank.allowed_suffixes   DNS suffixes under which any name is allowed
#
# The engine loads this file itself when a directory has no `package crank.defaults`
# of its own; `crank ca init` writes a copy into the CA's policy directory to read and,
# if you must, edit. Input and output of each rule: policies/README.md.
package crank.defaults

import rego.v1

allowed_key_types := {"ecdsa-p256", "ecdsa-p384", "ed25519", "rsa-2048", "rsa-3072"}

# can_issue_certificate ---------------------------------------------------------
#
# Written with sets computed once per decision rather than helper functions called
# per requested name: the same decisions, in a fraction of the evaluation time.

# Reasons other policy files give (policies/examples/deny_workers.rego).
deny contains msg if {
	some msg in data.crank.deny
}

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
# allowed (policies/examples/capability_sans.rego).
under_allowed_suffix contains name if {
	some name in input.requested_dns_sans
	some suffix in data.crank.allowed_suffixes
	endswith(name, concat("", [".", suffix]))
}

can_issue_certificate := {"allow": true} if count(deny) == 0

can_issue_certificate := {"allow": false, "reason": concat("; ", sort(deny))} if count(deny) > 0

# certificate_validity_period ------------------------------------------------------
#
# 24 hours, or what the CA was started with (`crank ca serve --leaf-validity`, given to
# policy as data.crank_settings.leaf_validity_seconds).

default certificate_validity_period := 86400

certificate_validity_period := data.crank_settings.leaf_validity_seconds

# should_renew_certificate -----------------------------------------------------------

lifetime := input.not_after - input.issued_at

should_renew_certificate := {"renew": true, "expiring_soon": true} if lifetime <= 0

should_renew_certificate := {
	"renew": (input.now - input.issued_at) >= ((lifetime * 2) / 3) + ((lifetime * input.jitter) / 20),
	"expiring_soon": (input.not_after - input.now) < lifetime / 4,
} if lifetime > 0

# revoke_certificate ---------------------------------------------------------------

default revoke_certificate := true

# can_access_capability ------------------------------------------------------------
#
# Asked for every request a worker (or the CA, or the platform registry) serves. A
# route that names no capability: any caller of the trust domain. Administrators:
# everything. Capabilities every worker uses: any caller of the trust domain. Any
# other capability: callers the CA granted it at issuance (`email.*` grants every
# capability under `email.`).

open_capabilities := {"platform.register", "platform.heartbeat"}

same_domain if input.caller.trust_domain == input.target.trust_domain

holds if input.caller.administrator

holds if input.target.capability in open_capabilities

holds if input.target.capability in input.caller.capabilities

holds if "admin" in input.caller.capabilities

holds if {
	some grant in input.caller.capabilities
	endswith(grant, ".*")
	startswith(input.target.capability, trim_suffix(grant, "*"))
}

# One chain, tried in order: the first branch whose body holds decides.
can_access_capability := {"allow": false, "reason": sprintf(
	"caller %s is of trust domain %q, not %q",
	[input.caller.spiffe_id, input.caller.trust_domain, input.target.trust_domain],
)} if {
	# `not`, so that a caller without a trust domain is denied too.
	not same_domain
} else := {"allow": true} if {
	input.target.capability == null
} else := {"allow": true} if {
	holds
} else := {"allow": false, "reason": sprintf(
	"caller %s does not hold capability %s; grant it at issuance (`crank token create --capability %s`) or allow it in can_access_capability",
	[input.caller.spiffe_id, input.target.capability, input.target.capability],
)}
