from tui_infer.cli import main

raise SystemExit(main())
