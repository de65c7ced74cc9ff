from harvest_async.cli import main

raise SystemExit(main())
