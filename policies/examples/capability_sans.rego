# Example: a `san-suffix:<domain>` capability in the join token allows every DNS name
# under that domain (the default already allows exact names granted by `san:<name>`).
# It feeds the default policy's `allowed_suffixes` extension point.
package crank

import rego.v1

allowed_suffixes contains suffix if {
	some cap in input.capabilities
	startswith(cap, "san-suffix:")
	suffix := trim_prefix(cap, "san-suffix:")
}
