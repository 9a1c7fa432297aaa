from hoopfast.cli import main

raise SystemExit(main())
