# Example: shorter certificates in production, the default (24 h) elsewhere.
package crank

import rego.v1

certificate_validity_period := 3600 if input.environment == "production"

certificate_validity_period := 14400 if input.environment == "staging"
