"""What the tests stand on: a real Azurite, a real server, a FUSE fault layer, a counting relay,
receivers for webhooks and OTLP, a real Prometheus and tinyproxy, polling with a deadline."""
