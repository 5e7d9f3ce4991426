from vmnet.cli.main import main

main()
