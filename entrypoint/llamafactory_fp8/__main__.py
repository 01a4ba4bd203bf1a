from llamafactory_fp8.cli import main

raise SystemExit(main())
