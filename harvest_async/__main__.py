from harvest_async.cli.main import main

raise SystemExit(main())
