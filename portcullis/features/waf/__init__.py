"""Web application firewall: a SecLang (ModSecurity language) engine that runs the OWASP CRS."""
