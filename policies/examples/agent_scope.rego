# Example: certificates asked for through an agent (`crank agent`, for workloads that do
# not link crank-runtime) only for worker ids under "legacy-". `input.agent` is the
# agent's worker id, null when a worker asks for itself. Drop it into a policy
# directory, alone or with others.
package crank

import rego.v1

deny contains msg if {
	input.agent != null
	not startswith(input.worker_id, "legacy-")
	msg := sprintf("agent %s may only obtain certificates for legacy-* workers, not %s", [input.agent, input.worker_id])
}
