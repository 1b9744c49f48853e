# Example: refuse certificates to listed worker ids (e.g. a compromised worker), in
# addition to the default rules. Drop it into a policy directory, alone or with others.
package crank

import rego.v1

denied_workers := {"mallory", "compromised-worker-7"}

deny contains msg if {
	input.worker_id in denied_workers
	msg := sprintf("worker %q is on the deny list", [input.worker_id])
}
