from vmnet.cli.entry import main

main()
