# Example: the worker `prometheus` may read every worker's `/metrics` without a grant in
# its certificate; every other call is decided by the defaults. Drop it into a policy
# directory, alone or with others.
package crank

import rego.v1

scrapers := {"prometheus"}

can_access_capability := {"allow": true} if {
	input.target.capability == "metrics.read"
	input.caller.worker_id in scrapers
	input.caller.trust_domain == input.target.trust_domain
}
