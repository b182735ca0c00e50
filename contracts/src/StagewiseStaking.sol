// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title StagewiseStaking
/// @notice Stake of stage workers, slashing by validators, epoch anchors of the stagewise ledger and
/// reward claims against the latest anchored rewards root.
/// @dev Merkle proofs follow OpenZeppelin's MerkleProof (keccak256 over sorted pairs). A reward leaf is
/// keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount)))), the double hash that keeps a
/// leaf from ever being read as an inner node. Every state-changing function that moves ether follows
/// checks-effects-interactions and runs under one reentrancy lock.
contract StagewiseStaking {
    // ------------------------------------------------------------------ errors

    error NotOwner(address caller);
    error NotValidator(address caller);
    error ZeroAddress();
    error ZeroAmount();
    error ValidatorAlreadyAdded(address validator);
    error ValidatorNotFound(address validator);
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingToWithdraw();
    error UnbondingNotElapsed(uint256 releaseAt, uint256 nowTimestamp);
    error SlashExceedsStake(uint256 amount, uint256 slashable);
    error EvidenceAlreadyUsed(bytes32 evidenceHash);
    error EpochNotIncreasing(uint256 epoch, uint256 latestEpoch);
    error NoRewardsRoot();
    error InvalidProof();
    error NothingToClaim(uint256 cumulativeAmount, uint256 alreadyClaimed);
    error InsufficientRewardPool(uint256 payout, uint256 pool);
    error TransferFailed(address to, uint256 amount);
    error ReentrantCall();

    // ------------------------------------------------------------------ events

    event Staked(address indexed worker, uint256 amount, uint256 totalStake);
    event UnstakeRequested(address indexed worker, uint256 amount, uint256 totalUnbonding, uint256 releaseAt);
    event Withdrawn(address indexed worker, uint256 amount);
    event Slashed(
        address indexed worker, bytes32 indexed evidenceHash, address indexed validator, uint256 amount
    );
    event Anchored(
        uint256 indexed epoch, bytes32 entriesRoot, bytes32 rewardsRoot, uint256 entryCount, address validator
    );
    event Claimed(address indexed account, uint256 amount, uint256 cumulativeAmount);
    event RewardsFunded(address indexed funder, uint256 amount, uint256 pool);
    event ValidatorAdded(address indexed validator);
    event ValidatorRemoved(address indexed validator);
    event TreasuryChanged(address indexed treasury);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);

    // ------------------------------------------------------------------ state

    uint256 private constant UNLOCKED = 1;
    uint256 private constant LOCKED = 2;
    uint256 private lock = UNLOCKED;

    address public owner;
    address public treasury;
    uint256 public immutable unbondingDelay;

    mapping(address => bool) public isValidator;

    mapping(address => uint256) public stakeOf;
    mapping(address => uint256) public unbondingOf;
    mapping(address => uint256) public releaseAtOf;

    mapping(bytes32 => bool) public evidenceUsed;

    uint256 public anchorCount;
    uint256 public latestEpoch;
    bytes32 public latestRewardsRoot;
    mapping(uint256 => bytes32) public entriesRootOf;

    uint256 public rewardPool;
    mapping(address => uint256) public claimedOf;

    // ------------------------------------------------------------------ modifiers

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner(msg.sender);
        _;
    }

    modifier onlyValidator() {
        if (!isValidator[msg.sender]) revert NotValidator(msg.sender);
        _;
    }

    modifier nonReentrant() {
        if (lock == LOCKED) revert ReentrantCall();
        lock = LOCKED;
        _;
        lock = UNLOCKED;
    }

    constructor(address treasury_, uint256 unbondingDelay_) {
        if (treasury_ == address(0)) revert ZeroAddress();
        owner = msg.sender;
        treasury = treasury_;
        unbondingDelay = unbondingDelay_;
        emit OwnershipTransferred(address(0), msg.sender);
        emit TreasuryChanged(treasury_);
    }

    // ------------------------------------------------------------------ owner

    function addValidator(address validator) external onlyOwner {
        if (validator == address(0)) revert ZeroAddress();
        if (isValidator[validator]) revert ValidatorAlreadyAdded(validator);
        isValidator[validator] = true;
        emit ValidatorAdded(validator);
    }

    function removeValidator(address validator) external onlyOwner {
        if (!isValidator[validator]) revert ValidatorNotFound(validator);
        isValidator[validator] = false;
        emit ValidatorRemoved(validator);
    }

    function setTreasury(address treasury_) external onlyOwner {
        if (treasury_ == address(0)) revert ZeroAddress();
        treasury = treasury_;
        emit TreasuryChanged(treasury_);
    }

    function transferOwnership(address newOwner) external onlyOwner {
        if (newOwner == address(0)) revert ZeroAddress();
        emit OwnershipTransferred(owner, newOwner);
        owner = newOwner;
    }

    // ------------------------------------------------------------------ stake

    function stake() external payable nonReentrant {
        if (msg.value == 0) revert ZeroAmount();
        uint256 total = stakeOf[msg.sender] + msg.value;
        stakeOf[msg.sender] = total;
        emit Staked(msg.sender, msg.value, total);
    }

    /// @notice Move `amount` of active stake into unbonding. Every request restarts the delay for the whole
    /// unbonding balance, so stake can never leave sooner than `unbondingDelay` after its last request.
    function requestUnstake(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        uint256 active = stakeOf[msg.sender];
        if (amount > active) revert InsufficientStake(amount, active);
        uint256 unbonding = unbondingOf[msg.sender] + amount;
        uint256 releaseAt = block.timestamp + unbondingDelay;
        stakeOf[msg.sender] = active - amount;
        unbondingOf[msg.sender] = unbonding;
        releaseAtOf[msg.sender] = releaseAt;
        emit UnstakeRequested(msg.sender, amount, unbonding, releaseAt);
    }

    function withdraw() external nonReentrant {
        uint256 amount = unbondingOf[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        uint256 releaseAt = releaseAtOf[msg.sender];
        if (block.timestamp < releaseAt) revert UnbondingNotElapsed(releaseAt, block.timestamp);
        unbondingOf[msg.sender] = 0;
        releaseAtOf[msg.sender] = 0;
        emit Withdrawn(msg.sender, amount);
        _send(msg.sender, amount);
    }

    // ------------------------------------------------------------------ validators

    /// @notice Take `amount` from `worker` (active stake first, then what is unbonding) and send it to the
    /// treasury. One piece of evidence slashes once.
    function slash(address worker, uint256 amount, bytes32 evidenceHash) external onlyValidator nonReentrant {
        if (amount == 0) revert ZeroAmount();
        if (evidenceUsed[evidenceHash]) revert EvidenceAlreadyUsed(evidenceHash);
        uint256 active = stakeOf[worker];
        uint256 unbonding = unbondingOf[worker];
        if (amount > active + unbonding) revert SlashExceedsStake(amount, active + unbonding);
        evidenceUsed[evidenceHash] = true;
        if (amount <= active) {
            stakeOf[worker] = active - amount;
        } else {
            stakeOf[worker] = 0;
            unbondingOf[worker] = unbonding - (amount - active);
        }
        emit Slashed(worker, evidenceHash, msg.sender, amount);
        _send(treasury, amount);
    }

    /// @notice Record the roots of a closed ledger epoch. Constant gas whatever `entryCount` is.
    function anchor(uint256 epoch, bytes32 entriesRoot, bytes32 rewardsRoot, uint256 entryCount)
        external
        onlyValidator
    {
        if (anchorCount != 0 && epoch <= latestEpoch) revert EpochNotIncreasing(epoch, latestEpoch);
        anchorCount += 1;
        latestEpoch = epoch;
        latestRewardsRoot = rewardsRoot;
        entriesRootOf[epoch] = entriesRoot;
        emit Anchored(epoch, entriesRoot, rewardsRoot, entryCount, msg.sender);
    }

    // ------------------------------------------------------------------ rewards

    function fundRewards() external payable nonReentrant {
        if (msg.value == 0) revert ZeroAmount();
        uint256 pool = rewardPool + msg.value;
        rewardPool = pool;
        emit RewardsFunded(msg.sender, msg.value, pool);
    }

    /// @notice Pay the caller what its cumulative reward in the latest rewards root exceeds what it has
    /// already claimed.
    function claim(uint256 cumulativeAmount, bytes32[] calldata proof) external nonReentrant {
        bytes32 root = latestRewardsRoot;
        if (root == bytes32(0)) revert NoRewardsRoot();
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(msg.sender, cumulativeAmount))));
        if (!_verify(proof, root, leaf)) revert InvalidProof();
        uint256 already = claimedOf[msg.sender];
        if (cumulativeAmount <= already) revert NothingToClaim(cumulativeAmount, already);
        uint256 payout = cumulativeAmount - already;
        uint256 pool = rewardPool;
        if (payout > pool) revert InsufficientRewardPool(payout, pool);
        claimedOf[msg.sender] = cumulativeAmount;
        rewardPool = pool - payout;
        emit Claimed(msg.sender, payout, cumulativeAmount);
        _send(msg.sender, payout);
    }

    // ------------------------------------------------------------------ views

    /// @notice What a slash of `worker` could take at most: active stake plus what is unbonding.
    function slashableOf(address worker) external view returns (uint256) {
        return stakeOf[worker] + unbondingOf[worker];
    }

    // ------------------------------------------------------------------ internal

    function _send(address to, uint256 amount) private {
        (bool ok,) = to.call{value: amount}("");
        if (!ok) revert TransferFailed(to, amount);
    }

    /// @dev OpenZeppelin MerkleProof.verify: fold the proof over the leaf with sorted-pair keccak256.
    function _verify(bytes32[] calldata proof, bytes32 root, bytes32 leaf) private pure returns (bool) {
        bytes32 computed = leaf;
        for (uint256 i = 0; i < proof.length; i++) {
            bytes32 sibling = proof[i];
            computed = computed < sibling ? _hashPair(computed, sibling) : _hashPair(sibling, computed);
        }
        return computed == root;
    }

    function _hashPair(bytes32 a, bytes32 b) private pure returns (bytes32 value) {
        assembly ("memory-safe") {
            mstore(0x00, a)
            mstore(0x20, b)
            value := keccak256(0x00, 0x40)
        }
    }
}
