from dinoflow.cli import main

raise SystemExit(main())
