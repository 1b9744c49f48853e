# Example: the reference platform's absolute windows instead of relative ones: warn
# when fewer than 30 days remain, renew when fewer than 7 days remain.
package crank

import rego.v1

absolute_windows := {"expiring_soon_days": 30, "renew_days": 7}

remaining := input.not_after - input.now

should_renew_certificate := {
	"renew": remaining < absolute_windows.renew_days * 86400,
	"expiring_soon": remaining < absolute_windows.expiring_soon_days * 86400,
}
