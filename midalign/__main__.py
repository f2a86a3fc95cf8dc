from midalign.cli import main

raise SystemExit(main())
