"""E-mail for journeys: template rendering (render), MIME building (message),
DKIM (dkim), header compliance checks (headers_check) and bounce/complaint
report parsing (reports). Pure Python: no I/O."""
