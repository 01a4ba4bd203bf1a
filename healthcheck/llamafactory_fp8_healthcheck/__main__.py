from llamafactory_fp8_healthcheck.cli import main

raise SystemExit(main())
